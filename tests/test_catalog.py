"""Released-file catalogue and first-run download (network replaced by fakes)."""

import os
import socket
import time
from pathlib import Path

import pytest
from helpers import StandInHub

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
