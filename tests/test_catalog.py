"""Released-file catalogue and first-run download (network replaced by fakes)."""

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from tooncrafter_core import __main__ as cli
from tooncrafter_core.weights import catalog


def _offline(*args, **kwargs):
    raise OSError("Name or service not known")


def test_offline_download_fails_at_once_naming_file_url_and_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", _offline)
    t0 = time.monotonic()
    with pytest.raises(catalog.DownloadError) as err:
        catalog.download(catalog.DEFAULT, tmp_path / "models")
    assert time.monotonic() - t0 < 2
    msg = str(err.value)
    assert catalog.DEFAULT.url in msg and str(tmp_path / "models" / catalog.DEFAULT.name) in msg


def test_present_file_is_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", _offline)
    (tmp_path / catalog.DEFAULT.name).write_bytes(b"x")
    assert catalog.download(catalog.DEFAULT, tmp_path) == tmp_path / catalog.DEFAULT.name


class StandInHub:
    """A local stand-in for the Hugging Face endpoint (HF_ENDPOINT): serves `files` under
    /{repo}/resolve/{revision}/{filename}, publishing the true size and sha256 of `published` bytes
    (so serving other bytes is a corrupted download)."""

    def __init__(self):
        import http.server
        import threading
        import urllib.parse

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
                if body is not None:
                    self.wfile.write(body)

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
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                             env={**os.environ, "HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1",
                                  "HF_HOME": str(folder.parent / "hf_home"), **env})
        return run.returncode, run.stderr


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hub():
    stand_in = StandInHub()
    yield stand_in
    stand_in.server.shutdown()


def test_download_is_checked_against_the_hubs_sha256_and_lands_under_the_catalogue_name(tmp_path, hub):
    entry = catalog.find("tooncrafter_512_interp.safetensors")  # model.safetensors in a PR revision
    weights = os.urandom(3 << 20)
    hub.serve(entry, weights)
    code, err = hub.download(entry, tmp_path / "models")
    assert code == 0, err
    target = tmp_path / "models" / "tooncrafter_512_interp.safetensors"
    assert target.read_bytes() == weights and "checking the sha256" in err
    assert [p.name for p in (tmp_path / "models").iterdir() if p.is_file()] == [target.name]
    assert not list((tmp_path / "models" / catalog.STAGING).glob("*.safetensors*"))  # nothing left to pick up


def test_a_corrupted_download_is_deleted_and_named(tmp_path, hub):
    entry = catalog.find("tooncrafter_512_interp.safetensors")
    weights = os.urandom(1 << 20)
    hub.serve(entry, served=bytes(reversed(weights)), published=weights)  # same size, other bytes
    code, err = hub.download(entry, tmp_path / "models")
    assert code != 0
    assert "the downloaded tooncrafter_512_interp.safetensors is not the file Doubiiu/ToonCrafter publishes (sha256 " in err
    assert "deleted it; run again to download it again" in err
    models = tmp_path / "models"
    assert not (models / entry.name).exists()
    assert not [p for p in models.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".unverified")]
    # Served correctly, the next run gets it.
    hub.serve(entry, weights)
    assert hub.download(entry, models)[0] == 0 and (models / entry.name).read_bytes() == weights


def test_hf_hub_offline_downloads_nothing_and_says_what_to_do(tmp_path, hub):
    entry = catalog.find("tooncrafter_512_interp.safetensors")
    hub.serve(entry, b"weights")
    code, err = hub.download(entry, tmp_path / "models", HF_HUB_OFFLINE="1")
    assert code != 0 and "HF_HUB_OFFLINE is set, so nothing is downloaded: download https://huggingface.co/" in err
    assert hub.requests == []


def test_cli_without_ckpt_offline_says_what_to_download(tmp_path, monkeypatch, caplog):
    from PIL import Image

    monkeypatch.setattr(socket, "create_connection", _offline)
    for name in ("a.png", "b.png"):  # the keyframes are read first: they must be there to reach the download
        Image.new("RGB", (64, 64)).save(tmp_path / name)
    code = cli.main(["interpolate", "--models-dir", str(tmp_path), "--start", str(tmp_path / "a.png"),
                     "--end", str(tmp_path / "b.png"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"save it as {tmp_path / catalog.DEFAULT.name}" in caplog.text


def test_every_release_is_unique_and_has_a_source():
    names = [f.name for f in catalog.RELEASED]
    assert len(names) == len(set(names))
    assert all(f.url.startswith("https://huggingface.co/") for f in catalog.RELEASED)
    assert [f.encoders for f in catalog.RELEASED].count(False) == 1  # the pruned file


def test_the_cli_run_from_a_pack_in_comfyui_uses_comfyuis_models_folder(tmp_path):
    """One copy of each file: the CLI of a pack in ComfyUI/custom_nodes downloads where ComfyUI looks."""
    import shutil
    import subprocess
    import sys

    from helpers import REPO

    comfy = tmp_path / "ComfyUI"
    pack = comfy / "custom_nodes" / "ComfyUI-ToonCrafter"
    (comfy / "folder_paths.py").parent.mkdir(parents=True)
    (comfy / "folder_paths.py").write_text("# a stand-in ComfyUI\n")
    shutil.copytree(REPO / "tooncrafter_core", pack / "tooncrafter_core", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOONCRAFTER_MODELS")}
    run = subprocess.run([sys.executable, "-m", "tooncrafter_core", "interpolate", "--start", "no.png", "--end", "no.png",
                          "--out", str(tmp_path / "out")], cwd=pack, capture_output=True, text=True, env=env)
    assert run.returncode == 2  # the missing keyframes, after the folder was named
    assert f"models folder: {comfy / 'models' / 'tooncrafter'} (the pack is in {comfy}'s custom_nodes)" in run.stderr


def test_models_folder_order_environment_then_extra_model_paths_then_comfyui_then_the_current_folder(tmp_path):
    from tooncrafter_core.commands.common import MODELS_DIR, default_models_dir

    comfy = tmp_path / "ComfyUI"
    pack = comfy / "custom_nodes" / "pack"
    pack.mkdir(parents=True)
    assert default_models_dir(pack, {})[0] == MODELS_DIR  # not a ComfyUI: no folder_paths.py
    (comfy / "folder_paths.py").write_text("")
    assert default_models_dir(pack, {})[0] == comfy / "models" / "tooncrafter"
    (comfy / "extra_model_paths.yaml").write_text(
        "other:\n  base_path: /data/other\n  tooncrafter: tc\n"
        "mine:\n  base_path: /data/models\n  is_default: true\n  tooncrafter: |\n    tooncrafter\n    more\n"
    )
    assert default_models_dir(pack, {})[0] == Path("/data/models/tooncrafter")
    assert default_models_dir(pack, {"TOONCRAFTER_MODELS": "/x"})[0] == Path("/x")
