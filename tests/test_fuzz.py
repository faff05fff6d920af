"""Property-based fuzzing (hypothesis) of what reads outside data: image files, safetensors and .ckpt
checkpoints (as files and as contents the loader builds a model from), LoRA files and PEFT folders, sketch
encoder files, training dataset folders, original-format yaml, shot lists, colorize keys, sketch frame
numbers and the CLI's options.
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


@st.composite
def odd_checkpoint_contents(draw, valid: dict):
    """Well-formed files whose tensors are not the model's: keys dropped, renamed or added, a tensor of
    another shape, rank or dtype, only one part of the model, nothing at all."""
    state = dict(valid)
    keys = sorted(state)
    how = draw(st.sampled_from(["drop", "rename", "extra", "shape", "rank", "int", "vae-only", "unet-only", "empty"]))
    key = draw(st.sampled_from(keys))
    if how == "drop":
        for k in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True)):
            del state[k]
    elif how == "rename":
        state[key.replace(".", "_", 1)] = state.pop(key)
    elif how == "extra":
        state["model.diffusion_model.extra.weight"] = torch.zeros(3)
    elif how == "shape":
        shape = draw(st.lists(st.integers(0, 9), min_size=0, max_size=4))
        state[key] = torch.zeros(shape)
    elif how == "rank":
        state[key] = state[key].flatten() if state[key].ndim > 1 else state[key][None, None]
    elif how == "int":
        state[key] = state[key].to(torch.int64)
    elif how in ("vae-only", "unet-only"):
        prefix = "first_stage_model." if how == "vae-only" else "model.diffusion_model."
        state = {k: v for k, v in state.items() if k.startswith(prefix)}
    else:
        state = {}
    return state


@pytest.fixture(scope="module")
def tiny_state(tiny_bytes) -> dict:
    from safetensors.torch import load

    return load(tiny_bytes)


@examples(40)
@given(data=st.data())
def test_checkpoint_contents_40_examples(tmp_path, tiny_state, data):
    from safetensors.torch import save_file

    from tooncrafter_core.weights.checkpoint import load_model

    path = tmp_path / "model.safetensors"
    save_file(data.draw(odd_checkpoint_contents(tiny_state)), str(path))
    try:
        model = load_model(path, dtype=torch.float32)
    except USER_ERRORS as e:
        one_line(e)
        return
    assert all(torch.isfinite(p).all() for p in model.unet.parameters())


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


# ---------------------------------------------------------------------------------------------
# LoRA and sketch-encoder files


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    """The tiny UNet's adaptable shapes, and a valid kohya file and PEFT folder for it (bytes)."""
    from helpers import TINY, random_lora, save_kohya_lora, save_peft_lora
    from safetensors.torch import load_file

    from tooncrafter_core.weights.lora import adaptable_shapes

    prefix = "model.diffusion_model."
    unet = {k[len(prefix):]: v for k, v in load_file(str(TINY / "model.safetensors")).items() if k.startswith(prefix)}
    factors = dict(list(random_lora(unet, rank=2).items())[:3])  # three layers keep every example quick
    root = tmp_path_factory.mktemp("loras")
    kohya = save_kohya_lora(root / "kohya.safetensors", factors, 4.0).read_bytes()
    peft = save_peft_lora(root / "peft", factors, 4.0)
    return {"targets": adaptable_shapes(unet), "kohya": kohya, "peft": peft.read_bytes(),
            "peft_config": (peft.parent / "adapter_config.json").read_text()}


ODD_TENSORS = {
    "rank0": lambda t: t[:0] if t.ndim else t, "1d": lambda t: t.flatten(), "0d": lambda t: t.sum(),
    "int": lambda t: t.to(torch.int32), "nan": lambda t: t * float("nan"), "inf": lambda t: t / 0.0,
    "huge": lambda t: t * 1e30, "transposed": lambda t: t.T if t.ndim == 2 else t, "wide": lambda t: t.repeat(2, 1),
}
ODD_CONFIG = [
    "{", "[1, 2]", "null", b"\xff\xfe{}", '{"r": "x", "lora_alpha": 4}', '{"r": 2, "lora_alpha": "four"}',
    '{"r": 0, "lora_alpha": 4}', '{"r": 2, "lora_alpha": null}', '{"r": 2, "lora_alpha": true}',
    '{"r": 2, "lora_alpha": 4, "rank_pattern": [1]}', '{"r": 2, "lora_alpha": 4, "alpha_pattern": {"attn2": "x"}}',
    '{"r": 2, "lora_alpha": 1e309}', '{"r": 2, "lora_alpha": 4, "use_dora": true}', '{"r": 2, "lora_alpha": 4}',
]


@st.composite
def lora_files(draw, setup):
    """A kohya file or a PEFT folder (weights + adapter_config.json), damaged as bytes, with a tensor made
    odd (no rank, wrong rank, wrong dims, integers, NaN/inf, huge), a half or alpha dropped or renamed,
    or the PEFT config broken."""
    from safetensors.torch import load, save

    peft = draw(st.booleans())
    blob = setup["peft"] if peft else setup["kohya"]
    config = setup["peft_config"] if peft else None
    how = draw(st.sampled_from(["bytes", "tensor", "alpha", "drop", "rename", "config", "ok"]))
    if how == "bytes":
        blob = draw(damaged_safetensors(blob))
    elif how in ("tensor", "alpha", "drop", "rename"):
        tensors = load(blob)
        keys = sorted(tensors)
        if how == "alpha":
            keys = [k for k in keys if k.endswith(".alpha")] or keys
        key = draw(st.sampled_from(keys))
        if how == "drop":
            del tensors[key]
        elif how == "rename":
            tensors[key.replace("attn2", "attn9")] = tensors.pop(key)
        elif how == "alpha" and key.endswith(".alpha"):
            tensors[key] = draw(st.sampled_from([torch.tensor([1.0, 2.0]), torch.tensor(float("nan")), torch.tensor(0.0),
                                                 torch.tensor(-3.0), torch.tensor(1e38), torch.tensor(7)]))
        else:
            tensors[key] = ODD_TENSORS[draw(st.sampled_from(sorted(ODD_TENSORS)))](tensors[key]).contiguous()
        blob = save(tensors)
    elif how == "config" and peft:
        config = draw(st.sampled_from(ODD_CONFIG))
    return peft, blob, config


@examples(150)
@given(data=st.data())
def test_lora_files_150_examples(tmp_path, lora_setup, data):
    from tooncrafter_core.weights.lora import LoraError, load_lora, merged_weight

    peft, blob, config = data.draw(lora_files(lora_setup))
    if peft:
        path = tmp_path / "adapter"
        path.mkdir(exist_ok=True)
        (path / "adapter_model.safetensors").write_bytes(blob)
        (path / "adapter_config.json").write_bytes(config.encode() if isinstance(config, str) else config)
    else:
        path = tmp_path / "lora.safetensors"
        path.write_bytes(blob)
    try:
        lora = load_lora(path, lora_setup["targets"])
    except LoraError as e:  # a LoRA's problems are LoraErrors: they name the file
        one_line(e)
        return
    assert lora.layers
    for key in lora.layers:  # what was accepted merges into finite weights, or is refused naming the weight
        for dtype in (torch.float32, torch.float16):
            try:
                merged = merged_weight(torch.zeros(lora_setup["targets"][key], dtype=dtype), key, [(lora, 1.0)])
            except LoraError as e:
                one_line(e)
                assert key in str(e) and lora.name in str(e)
                continue
            assert torch.isfinite(merged).all(), key


@pytest.fixture(scope="module")
def sketch_bytes(tmp_path_factory) -> bytes:
    from helpers import tiny_sketch_encoder

    return tiny_sketch_encoder(tmp_path_factory.mktemp("sketch") / "sketch.safetensors").read_bytes()


@examples(80)
@given(data=st.data())
def test_sketch_encoder_files_80_examples(tmp_path, sketch_bytes, data):
    from safetensors.torch import load, save

    from tooncrafter_core.weights.sketch_encoder import load_sketch_encoder

    path = tmp_path / "sketch.safetensors"
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(damaged_safetensors(sketch_bytes)))
    else:  # a well-formed file holding the wrong tensors: what the architecture is read from
        path.write_bytes(save(data.draw(odd_checkpoint_contents(load(sketch_bytes)))))
    try:
        encoder = load_sketch_encoder(path)
    except USER_ERRORS as e:
        one_line(e)
        return
    assert sum(p.numel() for p in encoder.parameters()) > 0


# ---------------------------------------------------------------------------------------------
# Training datasets: folders as artists export them


@st.composite
def dataset_trees(draw, root: Path):
    """A --data folder: clip and triplet folders (or frames straight in it), holding images valid and
    broken (any of image_files), frames of two sizes, stray files, nested folders and prompt.txt bytes."""
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    flat = draw(st.integers(0, 5)) == 0
    folders = [root] if flat else [root / (draw(st.sampled_from(["clip_a", "clip b", "tri", "é", "x.png"])) + str(i))
                                   for i in range(draw(st.integers(0, 4)))]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        triplet = draw(st.booleans())
        names = (draw(st.lists(st.sampled_from(["frame1", "frame2", "frame3"]), max_size=3, unique=True)) if triplet
                 else [f"{i:03d}" for i in range(draw(st.integers(0, 4)))])
        size = draw(st.sampled_from([(8, 8), (8, 8), (16, 8)]))
        for name in names:
            if draw(st.integers(0, 3)) == 0:
                blob, suffix, _ = draw(image_files())
                suffix = suffix if suffix in (".png", ".jpg", ".webp") else ".png"
            else:
                buffer = io.BytesIO()
                Image.new("RGB", draw(st.sampled_from([size, size, size, (size[0] + 8, size[1])]))).save(buffer, "PNG")
                blob, suffix = buffer.getvalue(), draw(st.sampled_from([".png", ".PNG"]))
            (folder / f"{name}{suffix}").write_bytes(blob)
        if draw(st.booleans()):
            (folder / "prompt.txt").write_bytes(draw(st.sampled_from([b"a cat", b"", b"\xff\xfe bad", b"\x00" * 3,
                                                                      "ü 猫".encode()])))
        if draw(st.integers(0, 3)) == 0:
            (folder / draw(st.sampled_from(["notes.txt", "Thumbs.db", ".DS_Store"]))).write_bytes(b"\x00\x01")
        if draw(st.integers(0, 4)) == 0:
            (folder / "nested").mkdir()
    return root


@examples(100)
@given(data=st.data())
def test_training_datasets_100_examples(tmp_path, data):
    from tooncrafter_core.datasets import DatasetError, find_training_items, window, window_starts

    root = data.draw(dataset_trees(tmp_path / "data"))
    try:
        items = find_training_items(root)
    except DatasetError as e:
        # One line, or a count and then one indented line per problem, each naming a file or folder.
        head, *problems = str(e).split("\n")
        assert "Traceback" not in str(e) and head
        if problems:
            assert head.startswith(f"{len(problems)} problem(s) in {root}"), str(e)
            assert all(p.startswith(f"  {root}") or p.startswith("  ") and ":" in p for p in problems), str(e)
        return
    assert items
    for item in items:
        assert isinstance(item.prompt, str) and len(item.frames) >= (3 if item.kind == "triplet" else 2)
        sizes = set()
        for path in item.frames:
            with Image.open(path) as im:
                sizes.add(im.size)
        assert len(sizes) == 1, item
        for frames_ in (2, 5, 16):
            for start in range(window_starts(item, frames_)):
                indices, positions = window(item, frames_, start)
                assert len(indices) == len(positions) and all(0 <= i < len(item.frames) for i in indices)
                assert all(0 <= p < frames_ for p in positions)
