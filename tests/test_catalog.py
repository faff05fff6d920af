"""Released-file catalogue and first-run download (network replaced by fakes)."""

import socket
import time

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


def test_download_lands_under_the_catalogue_name(tmp_path, monkeypatch):
    import huggingface_hub

    class _Conn:
        def close(self):
            pass

    calls = []

    def fake_download(repo_id, filename, revision=None, local_dir=None, **kwargs):
        calls.append((repo_id, filename, revision))
        path = local_dir / filename
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: _Conn())
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    entry = catalog.find("tooncrafter_512_interp.safetensors")
    path = catalog.download(entry, tmp_path)
    assert path == tmp_path / "tooncrafter_512_interp.safetensors" and path.read_bytes() == b"weights"
    assert calls == [("Doubiiu/ToonCrafter", "model.safetensors", "refs/pr/4")]


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
