"""Property-based fuzzing (hypothesis) of what reads outside data: image files, safetensors and .ckpt
checkpoints, original-format yaml, shot lists, colorize keys, sketch frame numbers and the CLI's options.
Every example ends as a valid result or one of the errors the CLI prints as one `error: …` line (and
ComfyUI shows), never another exception, a hang or non-finite pixels.

Profiles: `ci` (the default: a fixed seed and the example counts in each test's name) and `long`
(TOONCRAFTER_FUZZ_PROFILE=long: ten times as many, random seeds).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tooncrafter_core import colorize, frames, sketches
from tooncrafter_core.commands import shots
from tooncrafter_core.errors import InputError
from tooncrafter_core.models.config import ConfigError, from_original_yaml
from tooncrafter_core.weights.checkpoint import CheckpointError, read_state_dict
from tooncrafter_core.weights.safetensors_file import SafetensorsError

LONG = os.environ.get("TOONCRAFTER_FUZZ_PROFILE") == "long"
# Errors the CLI turns into one `error: …` line (tooncrafter_core.__main__) and nodes show as they are.
USER_ERRORS = (InputError, CheckpointError, ConfigError, SafetensorsError, shots.BatchError, ValueError)


def examples(n: int):
    """The ci profile's fixed example count and seed (the count is in the test's name), or ten times as
    many with random draws in the long profile."""
    return settings(max_examples=n * (10 if LONG else 1), derandomize=not LONG, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def one_line(error: BaseException) -> None:
    text = str(error)
    assert text and "\n" not in text.strip() and "Traceback" not in text, repr(text)


# ---------------------------------------------------------------------------------------------
# Image files: keyframes, sketches, line art and keys all go through frames.load_image


def _png_header(width: int, height: int) -> bytes:
    import zlib

    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "LA", "I", "F"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "TIFF": ".tif", "BMP": ".bmp"}


@st.composite
def image_files(draw):
    """An image as a file would hold it: a mode, a size from 1x1, a format, sometimes animated or rotated
    by EXIF; or a damaged file: truncated, bytes flipped, empty, a header claiming 100000x100000."""
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "flipped", "empty", "bomb", "noise"]))
    if kind == "empty":
        return b"", ".png", None
    if kind == "bomb":
        return _png_header(100_000, 100_000), ".png", None
    if kind == "noise":
        return draw(st.binary(min_size=1, max_size=256)), draw(st.sampled_from(list(FORMATS.values()))), None
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(list(FORMATS)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert("RGB")
    im = im.convert(mode) if mode not in ("I;16",) else im.convert("L").convert("I;16")
    buffer = io.BytesIO()
    options = {}
    rotated = fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans())
    if rotated:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees when shown
        options["exif"] = exif.tobytes()
    if fmt in ("GIF", "WEBP") and draw(st.booleans()):
        options.update(save_all=True, append_images=[im.copy()])
    try:
        im.save(buffer, format=fmt, **options)
    except (OSError, ValueError, KeyError):  # PIL cannot write this mode in this format: store it as TIFF,
        buffer, fmt, rotated = io.BytesIO(), "TIFF", False  # which takes every mode
        try:
            im.save(buffer, format="TIFF")
        except (OSError, ValueError, KeyError):
            buffer, fmt = io.BytesIO(), "PNG"
            im.convert("RGB").save(buffer, format="PNG")
    data = buffer.getvalue()
    if kind == "truncated":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))], FORMATS[fmt], None
    if kind == "flipped":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :], FORMATS[fmt], None
    return data, FORMATS[fmt], (w, h) if not rotated else (h, w)


@examples(300)
@given(case=image_files(), paper=st.booleans())
def test_image_reading_300_examples(tmp_path, case, paper):
    data, suffix, size = case
    path = tmp_path / f"frame{suffix}"
    path.write_bytes(data)
    try:
        image = frames.load_image(path, paper=paper)
    except ValueError as e:
        one_line(e)
        assert str(e).startswith(f"cannot read image {path}: ")
        assert size is None, f"a valid image was refused: {e}"
        return
    assert image.ndim == 4 and image.shape[:2] == (1, 3) and image.dtype == torch.float32
    assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    if size is not None:
        assert (image.shape[3], image.shape[2]) == size  # EXIF rotation applied, the first frame of an animation


# ---------------------------------------------------------------------------------------------
# Checkpoint files


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny")).read_bytes()


@st.composite
def damaged_safetensors(draw, valid: bytes):
    """The tiny checkpoint with its header or body damaged the ways a parser must survive."""
    n = struct.unpack("<Q", valid[:8])[0]
    header = json.loads(valid[8 : 8 + n])
    body = valid[8 + n :]
    how = draw(st.sampled_from(["length", "offsets", "overlap", "dtype", "shape", "json", "truncate", "nan", "ok"]))
    key = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    if how == "length":
        return struct.pack("<Q", draw(st.sampled_from([0, 1, n + 7, 2**40, 2**64 - 1]))) + valid[8:]
    if how == "json":
        raw = valid[8 : 8 + n]
        at = draw(st.integers(0, n - 1))
        return valid[:8] + raw[:at] + b"{" + raw[at + 1 :] + body
    if how == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    entry = header[key]
    if how == "offsets":
        entry["data_offsets"] = [draw(st.integers(-5, 2**40)), draw(st.integers(-5, 2**40))]
    elif how == "overlap":
        other = header[draw(st.sampled_from(sorted(k for k in header if k not in ("__metadata__", key))))]
        entry["data_offsets"] = list(other["data_offsets"])
    elif how == "dtype":
        entry["dtype"] = draw(st.sampled_from(["F64", "I8", "BOOL", "F8_E4M3", "XYZ", 7]))
    elif how == "shape":
        entry["shape"] = draw(st.lists(st.integers(-1, 3000), max_size=5))
    encoded = json.dumps(header).encode()
    out = struct.pack("<Q", len(encoded)) + encoded + body
    if how == "nan" and entry.get("dtype") in ("F32", "F16"):
        start = 8 + len(encoded) + entry["data_offsets"][0]
        nan = struct.pack("<f", float("nan")) if entry["dtype"] == "F32" else b"\x00\x7e"
        out = out[:start] + nan + out[start + len(nan) :]
    return out


@examples(120)
@given(data=st.data())
def test_safetensors_checkpoints_120_examples(tmp_path, tiny_bytes, data):
    blob = data.draw(damaged_safetensors(tiny_bytes))
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    try:
        state = read_state_dict(path)
    except USER_ERRORS as e:
        one_line(e)
        return
    assert all(isinstance(v, torch.Tensor) for v in state.values())


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/tooncrafter_fuzz_pwned",))


@st.composite
def ckpt_files(draw):
    kind = draw(st.sampled_from(["tensors", "evil", "noise", "zip-noise", "truncated", "not-a-dict"]))
    buffer = io.BytesIO()
    if kind == "noise":
        return draw(st.binary(max_size=512))
    if kind == "evil":
        return pickle.dumps({"state_dict": {"x": _Evil()}})
    if kind == "zip-noise":
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("archive/data.pkl", draw(st.binary(max_size=256)))
        return buffer.getvalue()
    value = {"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4)}} if kind != "not-a-dict" else [1, 2]
    torch.save(value, buffer)
    data = buffer.getvalue()
    return data[: draw(st.integers(0, len(data) - 1))] if kind == "truncated" else data


@examples(60)
@given(blob=ckpt_files())
def test_ckpt_pickles_60_examples_never_run_code(tmp_path, blob):
    path = tmp_path / "model.ckpt"
    path.write_bytes(blob)
    try:
        read_state_dict(path)
    except USER_ERRORS as e:
        one_line(e)
    assert not Path("/tmp/tooncrafter_fuzz_pwned").exists()


# ---------------------------------------------------------------------------------------------
# Text inputs: yaml configs, shot lists, frame numbers, keys


@examples(80)
@given(text=st.one_of(st.text(max_size=300), st.sampled_from([
    "model: {params: {parameterization: x}}", "model:\n  params:\n    unet_config: 5", "[1, 2", ":\n:", "{}",
    "model:\n  params:\n    unet_config:\n      params:\n        model_channels: -3"])))
def test_original_yaml_80_examples(tmp_path, text):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    try:
        from_original_yaml(path)
    except USER_ERRORS as e:
        one_line(e)


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                                     st.text(max_size=40)),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)


@examples(150)
@given(lines=st.lists(st.one_of(
    st.text(max_size=80),
    st.dictionaries(st.sampled_from(sorted(shots.FIELDS) + ["bogus"]), JSON_VALUES, max_size=6).map(json.dumps),
    st.sampled_from(['{"id": "../up", "keyframes": ["a.png", "b.png"]}', '{"id": "ok", "start": "a.png", "end": "b.png"}',
                     '{"id": "s", "keyframes": ["a.png", "b.png"], "steps": 1e309}', "id,keyframes\ns1,a.png;b.png"])),
    max_size=6))
def test_shot_lists_150_examples(tmp_path, lines):
    path = tmp_path / "shots.jsonl"
    path.write_text("\n".join(lines))
    try:
        parsed = shots.read_shots(path)
    except USER_ERRORS as e:
        assert str(e)  # BatchError lists each bad line on its own line, each naming its line number
        assert "Traceback" not in str(e)
        return
    for shot in parsed:
        assert shot.id and "/" not in shot.id and not shot.id.startswith(".") and len(shot.keyframes) >= 2


@examples(200)
@given(frames_=st.integers(-2, 80), keys=st.lists(st.integers(-3, 85), max_size=8), max_segment=st.integers(-1, 40),
       single=st.booleans())
def test_colorize_keys_200_examples(frames_, keys, max_segment, single):
    options = colorize.ColorizeOptions(max_segment=max_segment, single_key=single)
    try:
        segments = colorize.plan_segments(frames_, keys, options)
    except InputError as e:
        one_line(e)
        return
    covered = sorted({f for s in segments for f in s.frames})
    assert covered == list(range(frames_))  # every frame coloured, none outside the line art
    assert all(3 <= len(s.frames) <= max_segment for s in segments)
    assert [s.seed for s in segments] == list(range(len(segments)))


@examples(150)
@given(text=st.text(max_size=40), count=st.integers(0, 6), frames_=st.integers(1, 20))
def test_sketch_frame_numbers_150_examples(text, count, frames_):
    try:
        indices = sketches.parse_frame_indices(text)
        placed = sketches.place_sketches(torch.ones(1, 1, count, 4, 4), indices, frames_)
    except ValueError as e:
        one_line(e)
        return
    assert placed.shape == (1, 1, frames_, 4, 4)


@examples(60)
@given(lines=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=5),
       alpha=st.booleans(), dark=st.booleans())
def test_line_art_60_examples(lines, alpha, dark):
    images = [torch.rand(1, 4 if alpha else 3, h * 8, w * 8) for h, w in lines]
    if dark:
        images = [1 - i for i in images]
    try:
        art = colorize.prepare_line_art(images)
    except InputError as e:
        one_line(e)
        return
    assert art.shape[1] == 3 and torch.isfinite(art).all() and art.min() >= 0 and art.max() <= 1


# ---------------------------------------------------------------------------------------------
# The command line: any mix of real options and odd values ends in exit status 0, 2 or argparse's usage


VERB_OPTIONS = {
    "interpolate": ["--start", "--end", "--steps", "--cfg", "--eta", "--fs", "--seed", "--frames", "--height", "--width",
                    "--trim", "--sketch-scale", "--guidance-rescale", "--image-context-ratio"],
    "colorize": ["--line-art", "--keys", "--steps", "--max-segment", "--sketch-scale", "--seed", "--height", "--width"],
    "animate": ["--image", "--steps", "--fs", "--frames", "--height", "--width"],
}
VALUES = st.sampled_from(["0", "-1", "1", "3.5", "nan", "inf", "1e999", "", "x", "missing.png", "../..", "65", "100000"])


@examples(60)
@given(verb=st.sampled_from(sorted(VERB_OPTIONS)), data=st.data())
def test_cli_options_60_examples(tmp_path, verb, data, capsys):
    from tooncrafter_core.__main__ import main

    options = data.draw(st.lists(st.sampled_from(VERB_OPTIONS[verb]), max_size=5, unique=True))
    argv = [verb, "--out", str(tmp_path / "out"), "--ckpt", str(tmp_path / "missing.safetensors"), "--device", "cpu"]
    for option in options:
        argv += [option, data.draw(VALUES)]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: its usage, then one `error:` line
        assert e.code == 2
        assert ": error: " in capsys.readouterr().err.strip().splitlines()[-1]
        return
    assert code == 2  # nothing here can run: a missing file, checkpoint or a bad value, named in one line
    assert "Traceback" not in capsys.readouterr().err
