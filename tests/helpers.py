"""Paths and small builders shared by the core tests (no fixtures: conftest belongs to the ComfyUI harness)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# The pinned ComfyUI and the reference cases (see docs/development.md): beside the clone, or TOONCRAFTER_SHARED.
SHARED = Path(os.environ.get("TOONCRAFTER_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"
MANIFEST = REFERENCE / "tooncrafter_512_interp_keys.json"
TINY = REFERENCE / "tiny-4f-64x64"
# DynamiCrafter's tiny recorded cases: image-to-video 256 and 512, and the 512 interpolation model.
DC_I2V_256 = REFERENCE / "dynamicrafter" / "dc-i2v256-8f-32x32"
DC_I2V = REFERENCE / "dynamicrafter" / "dc-i2v512-4f-32x64"
DC_INTERP = REFERENCE / "dynamicrafter" / "dc-interp512-8f-32x32"


def relative_error(ours, reference) -> float:
    """||ours - reference|| / ||reference||, in fp32."""
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


def gradient_keyframes(h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two smooth, different keyframes (1 3 h w) in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([xx, yy, -xx])[None], torch.stack([-yy, xx, yy])[None]


def reference_cases() -> list[Path]:
    """Every recorded case under shared/reference, ToonCrafter's and (in dynamicrafter/) DynamiCrafter's
    (held-back cases are picked up the same way)."""
    found = list(REFERENCE.glob("*/reference.json")) + list(REFERENCE.glob("dynamicrafter/*/reference.json"))
    return sorted(p.parent for p in found)


def manifest() -> dict[str, tuple[tuple[int, ...], str]]:
    raw = json.loads(MANIFEST.read_text())
    return {k: (tuple(shape), dtype) for k, (shape, dtype) in raw.items()}


def tiny_checkpoint(folder: Path, stem: str = "tiny", case: Path = TINY) -> Path:
    """Copy a tiny fixture as <stem>.safetensors + <stem>.yaml + its OpenCLIP json into folder."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(case / "model.safetensors", folder / f"{stem}.safetensors")
    shutil.copy(case / "config.yaml", folder / f"{stem}.yaml")
    for js in case.glob("*.json"):
        if js.name not in ("reference.json",):
            shutil.copy(js, folder / js.name)
    return folder / f"{stem}.safetensors"


def full_size_unet_uninitialised():
    """The released UNet architecture (1.44 B parameters) on the CPU, built on meta and given
    uninitialised fp32 storage: the caller fills it (random weights for full-size checks)."""
    from tooncrafter_core.models.config import ModelConfig
    from tooncrafter_core.models.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(ModelConfig().unet)
    return unet.to_empty(device="cpu")


ATTN2_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def attn2_modules(unet_state) -> list[str]:
    """Module paths of the UNet's spatial cross-attention projections (what the published LoRA adapts)."""
    return sorted(
        k[: -len(".weight")]
        for k in unet_state
        if ".attn2." in k and k.endswith(".weight") and k.split(".attn2.")[1][: -len(".weight")] in ATTN2_PROJECTIONS
    )


def random_lora(unet_state, rank: int = 4, seed: int = 0, std: float = 0.2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random (A (r in), B (out r)) fp32 factors for every attn2 projection of a UNet state dict."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for module in attn2_modules(unet_state):
        out, inp = unet_state[module + ".weight"].shape
        factors[module] = (torch.randn(rank, inp, generator=g) * std, torch.randn(out, rank, generator=g) * std)
    return factors


def save_peft_lora(folder: Path, factors, alpha: float, **config) -> Path:
    """A PEFT `save_pretrained` folder: adapter_model.safetensors + adapter_config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    rank = next(iter(factors.values()))[0].shape[0]
    targets = sorted({m.rsplit(".attn2.", 1)[1] for m in factors})
    meta = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": targets, **config}
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder / "adapter_model.safetensors"


def save_kohya_lora(path: Path, factors, alpha: float) -> Path:
    """The same factors as a kohya-style file (lora_unet_<path with _>.lora_down/lora_up/alpha)."""
    from safetensors.torch import save_file

    tensors = {}
    for module, (a, b) in factors.items():
        name = "lora_unet_" + module.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = a.contiguous()
        tensors[f"{name}.lora_up.weight"] = b.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


# A PEFT adapter for the tiny fixture's UNet, as ComfyUI lists it from models/loras.
TINY_LORA = "tiny_peft/adapter_model.safetensors"
TINY_LORA_ALPHA = 8.0


def tiny_lora(path: Path, case: Path = TINY) -> Path:
    """Write the random PEFT LoRA for `case`'s UNet at `path` (.../adapter_model.safetensors)."""
    from safetensors.torch import load_file

    prefix = "model.diffusion_model."
    unet = {k[len(prefix) :]: v for k, v in load_file(str(case / "model.safetensors")).items() if k.startswith(prefix)}
    return save_peft_lora(path.parent, random_lora(unet), TINY_LORA_ALPHA)


# The same factors as a kohya-style file, for ComfyUI's own LoRA loaders on the native MODEL.
TINY_KOHYA_LORA = "tiny_kohya.safetensors"


def tiny_kohya_lora(path: Path, case: Path = TINY) -> Path:
    """`tiny_lora`'s factors and alpha as a kohya-style file at `path`."""
    from safetensors.torch import load_file

    prefix = "model.diffusion_model."
    unet = {k[len(prefix) :]: v for k, v in load_file(str(case / "model.safetensors")).items() if k.startswith(prefix)}
    return save_kohya_lora(path, random_lora(unet), TINY_LORA_ALPHA)


TINY_SKETCH_ENCODER = "tooncrafter_tiny_sketch.safetensors"


def tiny_sketch_encoder(path: Path) -> Path:
    """The recorded tiny sketch encoder (tests/data/sketch_tiny, stored in fp8) as an fp32 file at `path`."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(REPO / "tests" / "data" / "sketch_tiny" / "encoder.safetensors"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float() for k, v in state.items()}, str(path))
    return path


def make_clips(root: Path, clips: int = 4, frames: int = 6, size: tuple[int, int] = (64, 64)) -> Path:
    """Clip folders of a disc moving across a gradient (a different colour and path per clip), with a
    prompt.txt each: training data for the tiny fixture."""
    from PIL import Image, ImageDraw

    w, h = size
    for c in range(clips):
        folder = root / f"clip_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(frames):
            im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
            x = w * (0.2 + 0.6 * f / (frames - 1))
            y = h * (0.3 + 0.4 * ((c + f) % 3) / 2)
            r = h / 6
            ImageDraw.Draw(im).ellipse([x - r, y - r, x + r, y + r], fill=(255, 60 * c % 256, 40))
            im.save(folder / f"{f:03d}.png")
        (folder / "prompt.txt").write_text(f"a ball moves right, clip {c}")
    return root


class StandInHub:
    """A local stand-in for the Hugging Face endpoint (HF_ENDPOINT): serves `files` under
    /{repo}/resolve/{revision}/{filename}, publishing the true size and sha256 of `published` bytes
    (so serving other bytes is a corrupted download)."""

    def __init__(self, seconds_per_mib: float = 0.0):
        import http.server
        import threading
        import urllib.parse

        self.seconds_per_mib = seconds_per_mib
        self.files: dict[str, tuple[bytes, bytes]] = {}  # path -> (served, published)
        self.requests: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _headers(self):
                path = urllib.parse.unquote(self.path.split("?")[0])
                hub.requests.append(f"{self.command} {path}")
                if path not in hub.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                served, published = hub.files[path]
                sha = hashlib.sha256(published).hexdigest()
                self.send_response(200)
                for key, value in (("X-Repo-Commit", "a" * 40), ("ETag", f'"{sha}"'), ("X-Linked-Etag", f'"{sha}"'),
                                   ("X-Linked-Size", str(len(published))), ("Content-Length", str(len(served)))):
                    self.send_header(key, value)
                self.end_headers()
                return served

            def do_HEAD(self):
                self._headers()

            def do_GET(self):
                body = self._headers()
                for i in range(0, len(body or b""), 1 << 16):  # slowed down, to be killed mid-transfer
                    self.wfile.write(body[i : i + (1 << 16)])
                    time.sleep(hub.seconds_per_mib / 16)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, entry, served: bytes, published: bytes | None = None) -> None:
        self.files[f"/{entry.repo_id}/resolve/{entry.revision or 'main'}/{entry.filename}"] = (served, published or served)

    def download(self, entry, folder, **env):
        """`catalog.download` in a fresh process pointed at this endpoint -> (exit code, stderr)."""
        import subprocess
        import sys

        code = ("import logging, sys; logging.basicConfig(level=logging.INFO)\n"
                "from tooncrafter_core.weights import catalog\n"
                f"try: print(catalog.download(catalog.find({entry.name!r}), {str(folder)!r}))\n"
                "except catalog.DownloadError as e: sys.exit(f'error: {e}')")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1",
                                  "HF_HOME": str(folder.parent / "hf_home"), **env})
        return run.returncode, run.stderr
