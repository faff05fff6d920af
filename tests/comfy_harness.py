"""Integration-test harness: a real ComfyUI server with this pack linked in, a converter from the
frontend's workflow format to the API prompt format, and a check of workflows in the real
frontend running in headless Chromium."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import requests
from helpers import REPO, SHARED

log = logging.getLogger(__name__)

COMFYUI_SOURCE = SHARED / "comfyui"
PACK_NAME = "ComfyUI-ToonCrafter"


# Source that a test runs in a fresh process: ComfyUI imported as `main.py --cpu` would, this pack
# imported as `tc_pack`, the tiny fixture staged as tiny.safetensors and loaded as `handle`.
IN_PROCESS_PRELUDE = textwrap.dedent(
    """
    import importlib.util, logging, shutil, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, {comfy!r})
    import torch
    from comfy.cli_args import args
    args.cpu = True  # as `main.py --cpu`: this machine has no GPU
    import folder_paths
    import comfy.model_management as mm

    spec = importlib.util.spec_from_file_location("tc_pack", {repo!r} + "/__init__.py",
                                                  submodule_search_locations=[{repo!r}])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["tc_pack"] = pack
    spec.loader.exec_module(pack)
    from tc_pack.nodes import managed_model as tc_model

    folder = Path(tempfile.mkdtemp())
    for src, dst in (("model.safetensors", "tiny.safetensors"), ("config.yaml", "tiny.yaml"), ("TC-Tiny.json", "TC-Tiny.json")):
        shutil.copy(Path({tiny!r}) / src, folder / dst)
    folder_paths.add_model_folder_path("tooncrafter", str(folder), is_default=True)
    handle = tc_model.load("tiny.safetensors", "auto")
    """
)


def in_process_script(body: str) -> str:
    """`IN_PROCESS_PRELUDE` then `body` (dedented); both may use the format fields comfy, repo, tiny, tests."""
    from helpers import TINY

    source = IN_PROCESS_PRELUDE + textwrap.dedent(body)
    return source.format(comfy=str(COMFYUI_SOURCE), repo=str(REPO), tiny=str(TINY), tests=str(REPO / "tests"))

def run_in_comfy(body: str, timeout: float = 1800) -> dict:
    """Run `body` after the prelude in a fresh process (see `in_process_script`); it prints one line
    `RESULTS <json>`, which is returned."""
    proc = subprocess.run([sys.executable, "-c", in_process_script(body)], capture_output=True, text=True, cwd="/tmp",
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


class ComfyError(RuntimeError):
    """The server refused a request, failed to start, or a prompt failed."""


class WorkflowError(ValueError):
    """A UI-format workflow cannot be converted faithfully to an API prompt."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pack_import_errors(log_text: str) -> list[str]:
    """Lines of a ComfyUI log saying this pack failed to import or register its nodes."""
    markers = ("Cannot import", "IMPORT FAILED", "Skip ", "comfy_entrypoint in")
    return [
        line.strip()
        for line in log_text.splitlines()
        if PACK_NAME in line and any(marker in line for marker in markers)
    ]


def comfy_sampler_names() -> list[str]:
    """`comfy.samplers.KSampler.SAMPLERS` of the pinned ComfyUI, read from its source without importing
    it (test parameters are collected before any ComfyUI runs): KSAMPLER_NAMES + the extra names."""
    import ast

    tree = ast.parse((COMFYUI_SOURCE / "comfy" / "samplers.py").read_text())
    assigned = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    extra = assigned["SAMPLER_NAMES"]
    assert isinstance(extra, ast.BinOp) and isinstance(extra.left, ast.Name) and extra.left.id == "KSAMPLER_NAMES"
    return ast.literal_eval(assigned["KSAMPLER_NAMES"]) + ast.literal_eval(extra.right)


def pack_node_types(object_info: dict) -> set[str]:
    """Node types in `object_info` that this pack registered."""
    module = f"custom_nodes.{PACK_NAME}"
    return {name for name, info in object_info.items() if info.get("python_module") == module}


class ComfyServer:
    """A ComfyUI 0.3.64 server on a private copy of the tree, with this repo as a custom node pack.

    Construction copies the tree, so files can be dropped into `tooncrafter_models_dir` (or any
    folder under `models_dir`) before `start()`.
    """

    def __init__(self, workdir: Path | None = None, extra_args: tuple[str, ...] = ()):
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="comfyui-")) if workdir is None else Path(workdir)
        self.root = self.workdir / "ComfyUI"
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self.log_path = self.workdir / "comfyui.log"
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self._session = requests.Session()

        shutil.copytree(
            COMFYUI_SOURCE, self.root, ignore=shutil.ignore_patterns(".git", "__pycache__")
        )
        custom_nodes = self.root / "custom_nodes"
        custom_nodes.mkdir(exist_ok=True)
        (custom_nodes / PACK_NAME).symlink_to(REPO, target_is_directory=True)
        self.tooncrafter_models_dir.mkdir(parents=True, exist_ok=True)

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def tooncrafter_models_dir(self) -> Path:
        return self.models_dir / "tooncrafter"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise ComfyError("server not started")
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        """Start `main.py --cpu` on a free port and wait until the HTTP API answers."""
        if self._process is not None:
            raise ComfyError("server already started")
        self.port = _free_port()
        cmd = [
            sys.executable, "main.py", "--cpu",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", *self.extra_args,
        ]
        log.info("starting ComfyUI: %s (log: %s)", " ".join(cmd), self.log_path)
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._process = subprocess.Popen(
            cmd, cwd=self.root, stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        try:
            self._wait_until_up(timeout)
            # Skips the frontend's first-run template browser, which would cover the canvas.
            self._request("POST", "/settings/Comfy.TutorialCompleted", json=True)
        except BaseException:
            self.stop()
            raise

    def _wait_until_up(self, timeout: float) -> None:
        started = time.monotonic()
        while True:
            self._check_alive()
            try:
                if self._session.get(f"{self.base_url}/system_stats", timeout=5).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            if time.monotonic() > started + timeout:
                raise ComfyError(f"ComfyUI did not answer within {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.25)
        log.info("ComfyUI up at %s after %.1f s", self.base_url, time.monotonic() - started)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove the work dir if the harness made it."""
        if self._process is not None:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGTERM)
                try:
                    self._process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(self._process.pid, signal.SIGKILL)
                    self._process.wait()
            self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._session.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _check_alive(self) -> None:
        if self._process is None:
            raise ComfyError("server not started")
        if self._process.poll() is not None:
            raise ComfyError(f"ComfyUI exited with code {self._process.returncode}\n{self.log_tail()}")

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _request(self, method: str, path: str, **kwargs) -> Any:
        self._check_alive()
        response = self._session.request(method, f"{self.base_url}{path}", timeout=60, **kwargs)
        if not response.ok:
            raise ComfyError(f"{method} {path} -> {response.status_code}: {response.text[:4000]}")
        if "json" in response.headers.get("Content-Type", ""):
            return response.json()
        return response.content

    def object_info(self, node_type: str | None = None) -> dict:
        """`GET /object_info` (all node types) or `/object_info/<node_type>` (one, `{}` if unknown)."""
        return self._request("GET", "/object_info" if node_type is None else f"/object_info/{node_type}")

    def queue_prompt(self, api_prompt: dict) -> str:
        """Queue an API-format prompt; raise `ComfyError` with the node errors if it is invalid."""
        reply = self._request("POST", "/prompt", json={"prompt": api_prompt})
        if reply.get("node_errors"):
            raise ComfyError(f"prompt has node errors: {json.dumps(reply['node_errors'])}")
        return reply["prompt_id"]

    def wait_for(self, prompt_id: str, timeout: float = 300.0, check: bool = True) -> dict:
        """Poll `/history/<id>` until the prompt finished; raise if it failed and `check` is set."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self._request("GET", f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} not done after {timeout:.0f} s\n{self.log_tail()}")
            time.sleep(0.2)
        status = entry["status"]
        if check and status.get("status_str") != "success":
            errors = [data for event, data in status.get("messages", []) if event == "execution_error"]
            raise ComfyError(f"prompt {prompt_id} failed: {json.dumps(errors)[:4000]}\n{self.log_tail()}")
        return entry

    def run(self, api_prompt: dict, timeout: float = 300.0) -> dict:
        """Queue a prompt and wait for its history entry."""
        return self.wait_for(self.queue_prompt(api_prompt), timeout=timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """`POST /interrupt`: stop the running prompt (only `prompt_id`, if given)."""
        self._request("POST", "/interrupt", json={} if prompt_id is None else {"prompt_id": prompt_id})

    def view(self, file_info: dict) -> bytes:
        """Bytes of an output file named in a history entry (`filename`, `subfolder`, `type`)."""
        params = {key: file_info.get(key, "") for key in ("filename", "subfolder", "type")}
        return self._request("GET", "/view", params=params)


# --- UI workflow -> API prompt ---------------------------------------------------------------

MUTED, BYPASSED = 2, 4
UI_ONLY_TYPES = frozenset({"Note", "MarkdownNote"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


def _input_specs(node_def: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, required) of a node's inputs in the frontend's order (`input_order` first)."""
    inputs, order = node_def.get("input", {}), node_def.get("input_order", {})
    specs = []
    for section in ("required", "optional"):
        section_inputs = inputs.get(section, {})
        names = list(order.get(section, section_inputs))
        names += [name for name in section_inputs if name not in names]
        specs += [(name, section_inputs[name], section == "required") for name in names]
    return specs


def _options(spec: list) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def widget_value_names(node_def: dict) -> list[str | None]:
    """What each entry of a node's `widgets_values` holds: an input name, or None for a value the
    frontend keeps but never sends (control_after_generate, its combo filter, an upload button)."""
    names: list[str | None] = []
    has_upload = False
    for name, spec, required in _input_specs(node_def):
        kind = "COMBO" if isinstance(spec[0], list) else spec[0]
        options = _options(spec)
        if kind not in WIDGET_TYPES or options.get("forceInput"):
            continue
        names.append(name)
        # Mirrors the frontend (useIntWidget/useComboWidget): `control_after_generate` adds one
        # widget, plus a filter-list widget on combos; INT `seed`/`noise_seed` get it by default.
        control = options.get("control_after_generate", kind == "INT" and name in ("seed", "noise_seed"))
        if control and kind == "INT":
            names.append(None)
        elif control and kind == "COMBO":
            names += [None, None]
        if required and kind == "COMBO" and any(options.get(key) for key in UPLOAD_OPTIONS):
            has_upload = True
    if has_upload:
        # The upload button is appended after every other widget (uploadImage.ts).
        names.append(None)
    return names


def _links_by_id(workflow: dict) -> dict[Any, tuple[Any, int, Any, Any]]:
    """link id -> (origin node id, origin slot, target node id, type); both saved link formats."""
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["type"])
        else:
            link_id, origin, slot, target, _target_slot, link_type = link[:6]
            links[link_id] = (origin, slot, target, link_type)
    return links


class _Literal:
    """A value a virtual node (PrimitiveNode) feeds into a widget input."""

    def __init__(self, value: Any):
        self.value = value


def _api_value(value: Any) -> Any:
    # A bare list in an API prompt means a link; the backend unwraps `__value__`.
    return {"__value__": value} if isinstance(value, list) else value


def workflow_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a frontend (UI-format) workflow into an API prompt `{id: {class_type, inputs}}`.

    Raises `WorkflowError` rather than guessing: unknown node types, a `widgets_values` count that
    does not match the node's widgets, dangling links, subgraphs and group nodes.
    """
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = _links_by_id(workflow)
    subgraph_ids = {sub["id"] for sub in workflow.get("definitions", {}).get("subgraphs", [])}

    missing = sorted(
        {
            node["type"]
            for node in nodes.values()
            if node.get("mode", 0) not in (MUTED, BYPASSED)
            and node["type"] not in UI_ONLY_TYPES | {"Reroute", "PrimitiveNode"}
            and node["type"] not in object_info
        }
    )
    if missing:
        unsupported = [t for t in missing if t in subgraph_ids or t.startswith(("workflow>", "workflow/"))]
        if unsupported:
            raise WorkflowError(f"subgraphs and group nodes are not supported: {unsupported}")
        raise WorkflowError(f"node types missing from object_info: {missing}")

    def resolve(link_id: Any, seen: frozenset = frozenset()) -> list | _Literal | None:
        """Follow a link through virtual and bypassed nodes to `[node_id, slot]`, a literal or None."""
        if link_id in seen:
            raise WorkflowError(f"link cycle through link {link_id}")
        if link_id not in links:
            raise WorkflowError(f"input refers to missing link {link_id}")
        origin_id, slot, target_id, link_type = links[link_id]
        for end in (origin_id, target_id):
            if end not in nodes:
                raise WorkflowError(f"link {link_id} refers to missing node {end}")
        origin = nodes[origin_id]
        seen = seen | {link_id}
        if origin["type"] == "PrimitiveNode":
            return _Literal(origin["widgets_values"][0])
        if origin["type"] == "Reroute":
            upstream = origin.get("inputs", [{}])[0].get("link")
            return None if upstream is None else resolve(upstream, seen)
        mode = origin.get("mode", 0)
        if mode == MUTED:
            return None
        if mode == BYPASSED:
            # The frontend passes a bypassed node's first input of the same type straight through.
            for candidate in origin.get("inputs", []):
                if candidate.get("type") == link_type and candidate.get("link") is not None:
                    return resolve(candidate["link"], seen)
            return None
        return [str(origin_id), slot]

    prompt = {}
    for node_id, node in nodes.items():
        node_type = node["type"]
        if node_type in UI_ONLY_TYPES or node_type in ("Reroute", "PrimitiveNode"):
            continue
        if node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        values = node.get("widgets_values", [])
        if not isinstance(values, list):
            raise WorkflowError(f"node {node_id} ({node_type}): widgets_values is not a list: {values!r}")
        names = widget_value_names(object_info[node_type])
        if len(values) != len(names):
            raise WorkflowError(
                f"node {node_id} ({node_type}): {len(values)} widget values {values!r} "
                f"for {len(names)} widgets {names!r} (None = frontend-only value)"
            )
        inputs = {name: _api_value(value) for name, value in zip(names, values) if name is not None}
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            source = resolve(slot["link"])
            if source is None:
                inputs.pop(slot["name"], None)
            elif isinstance(source, _Literal):
                inputs[slot["name"]] = _api_value(source.value)
            else:
                inputs[slot["name"]] = source
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs}
    return prompt


# --- the real frontend in headless Chromium ----------------------------------------------------

_APP_READY_JS = """() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && Object.keys(window.LiteGraph.registered_node_types).length > 0)"""

# Loads the workflow through the frontend's own entry point and reports what the frontend itself
# knows afterwards; the DOM (dialogs, toasts) is read separately.
_LOAD_JS = """async ({workflow, checkCombos}) => {
    const problems = [];
    const registered = window.LiteGraph.registered_node_types;
    const virtualTypes = new Set(['Note', 'MarkdownNote', 'Reroute', 'PrimitiveNode']);
    for (const n of workflow.nodes || []) {
        if (!(n.type in registered)) problems.push(`node ${n.id}: type ${n.type} is not registered`);
    }
    await window.app.loadGraphData(workflow, true, true, null);
    const byId = new Map((workflow.nodes || []).map((n) => [String(n.id), n]));
    for (const node of window.app.graph.nodes) {
        const saved = byId.get(String(node.id));
        const label = `node ${node.id} (${saved ? saved.type : node.type})`;
        if (!saved) { problems.push(`${label}: not in the workflow`); continue; }
        if (node.has_errors) problems.push(`${label}: has_errors after load`);
        if (virtualTypes.has(saved.type) || node.has_errors) continue;
        const savedValues = saved.widgets_values || [];
        const kept = (node.widgets || []).filter((w) => w.serialize !== false).length;
        if (Array.isArray(savedValues) && savedValues.length !== kept) {
            problems.push(`${label}: ${savedValues.length} widgets_values for ${kept} widgets`);
        }
        if (!checkCombos) continue;
        for (const w of node.widgets || []) {
            const options = w.options && w.options.values;
            if (w.type === 'combo' && Array.isArray(options) && !options.includes(w.value)) {
                problems.push(`${label}: ${w.name}=${JSON.stringify(w.value)} is not one of ${JSON.stringify(options.slice(0, 20))}`);
            }
        }
    }
    return problems;
}"""

_VISIBLE_MESSAGES_JS = """() => {
    const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
    const text = (el) => el.innerText.replace(/\\s+/g, ' ').trim();
    return {
        dialogs: [...document.querySelectorAll('.p-dialog')].filter(visible).map(text),
        missingNodes: [...document.querySelectorAll('.comfy-missing-nodes .node-type')].map(text),
        toasts: [...document.querySelectorAll('.p-toast-message')].filter(visible)
            .filter((el) => !el.classList.contains('p-toast-message-success')
                         && !el.classList.contains('p-toast-message-info'))
            .map(text),
    };
}"""

_CLEAR_MESSAGES_JS = """() => {
    window.app.extensionManager.toast.removeAll();
    document.querySelectorAll('.p-dialog .p-dialog-close-button').forEach((b) => b.click());
}"""


class FrontendSession:
    """The ComfyUI frontend served by `base_url`, loaded in headless Chromium and ready to load
    workflows; use as a context manager."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base_url = base_url
        self.timeout_ms = timeout * 1000
        self.page_errors: list[str] = []
        self._playwright = None
        self._browser = None
        self.page = None

    def __enter__(self) -> FrontendSession:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            self.page = self._browser.new_page(viewport={"width": 1600, "height": 1000})
            self.page.set_default_timeout(self.timeout_ms)
            self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
            self.page.goto(self.base_url, wait_until="load")
            self.page.wait_for_function(_APP_READY_JS, timeout=self.timeout_ms)
            # The frontend restores (or creates) the default workflow right after the app is
            # exposed; loading ours before that finishes would be overwritten by it.
            self.page.wait_for_function("() => window.app.graph.nodes.length > 0", timeout=self.timeout_ms)
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None

    def load_workflow(self, workflow: dict | str | Path, check_combo_values: bool = True,
                      settle_s: float = 1.0) -> list[str]:
        """Load a UI-format workflow with `app.loadGraphData`; return the problems the frontend
        shows or knows about (empty list = loaded cleanly)."""
        if not isinstance(workflow, dict):
            workflow = json.loads(Path(workflow).read_text(encoding="utf-8"))
        self.page.evaluate(_CLEAR_MESSAGES_JS)
        self.page.wait_for_function("() => document.querySelectorAll('.p-dialog').length === 0")
        errors_before = len(self.page_errors)
        problems = self.page.evaluate(_LOAD_JS, {"workflow": workflow, "checkCombos": check_combo_values})
        # Dialogs and toasts are rendered by Vue after the load promise resolves.
        self.page.wait_for_timeout(settle_s * 1000)
        shown = self.page.evaluate(_VISIBLE_MESSAGES_JS)
        problems += [f"missing node in dialog: {name}" for name in shown["missingNodes"]]
        problems += [f"dialog: {text}" for text in shown["dialogs"]]
        problems += [f"toast: {text}" for text in shown["toasts"]]
        problems += [f"page error: {error}" for error in self.page_errors[errors_before:]]
        return problems

    def graph_to_prompt(self) -> dict:
        """The API prompt the frontend itself builds from the loaded graph (`app.graphToPrompt`)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def node_boxes(self) -> dict[str, list[float]]:
        """Each node of the loaded graph, by "id title", with the box the canvas draws it in: [x, y, width,
        height] in graph units, the title bar included (LiteGraph's getBounding)."""
        # A node stored smaller than its widgets need is drawn at least at computeSize once laid out.
        return self.page.evaluate(
            """() => Object.fromEntries(window.app.graph._nodes.map(n => {
                   const box = n.getBounding();
                   const need = n.computeSize ? n.computeSize() : [0, 0];
                   const title = box[3] - n.size[1];
                   return [`${n.id} ${n.title}`,
                           [box[0], box[1], Math.max(box[2], need[0]), Math.max(box[3], need[1] + title)]];
               }))"""
        )

    def screenshot(self, path: str | Path) -> None:
        self.page.screenshot(path=str(path))


def open_workflow_in_browser(base_url: str, workflow: dict | str | Path,
                             screenshot: str | Path | None = None) -> list[str]:
    """Open the frontend, load `workflow`, optionally screenshot it; return the problems found."""
    with FrontendSession(base_url) as session:
        problems = session.load_workflow(workflow)
        if screenshot is not None:
            session.screenshot(screenshot)
    return problems
