"""Checkpoint layouts, the full-size key manifest on the meta device, and refusing bad files."""

import dataclasses
import pickle

import pytest
import torch
from helpers import TINY, manifest, tiny_checkpoint
from safetensors.torch import load_file, save_file

from tooncrafter_core.models.config import ModelConfig, from_original_yaml
from tooncrafter_core.models.tooncrafter import ToonCrafter
from tooncrafter_core.weights.checkpoint import (
    CHECKPOINT_ONLY_KEYS,
    CheckpointError,
    infer_config,
    load_model,
    load_state_into,
    read_state_dict,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def meta_model(config=None, **kw) -> ToonCrafter:
    with torch.device("meta"):
        return ToonCrafter(config or ModelConfig(), **kw)


def test_full_size_model_has_exactly_the_released_keys_and_shapes():
    released = manifest()
    ours = {k: tuple(v.shape) for k, v in meta_model().state_dict().items()}
    assert not set(ours) & set(CHECKPOINT_ONLY_KEYS)
    assert set(ours) | set(CHECKPOINT_ONLY_KEYS) == set(released)
    wrong = {k: (ours[k], released[k][0]) for k in ours if ours[k] != released[k][0]}
    assert not wrong
    n_params = sum(v.numel() for v in meta_model().model.parameters())
    assert 1.40e9 < n_params < 1.45e9  # the 1.4 B UNet


def test_architecture_read_from_full_size_weights_is_the_default():
    shapes = {k: shape for k, (shape, _) in manifest().items()}
    assert infer_config(shapes) == ModelConfig()


def test_architecture_read_from_tiny_weights_matches_its_yaml():
    shapes = {k: tuple(v.shape) for k, v in load_file(str(TINY / "model.safetensors")).items()}
    inferred, from_yaml = infer_config(shapes), from_original_yaml(TINY / "config.yaml")
    # Head counts are not in the weights (OpenCLIP keeps them in its json); the rest is.
    assert inferred.unet == from_yaml.unet
    assert dataclasses.replace(inferred.vae, fusion_heads=8) == from_yaml.vae


@pytest.mark.parametrize("variant", ["full", "fp16", "pruned-fp16"])
def test_full_size_state_dicts_load_with_zero_mismatch(variant):
    state = {}
    for key, (shape, dtype) in manifest().items():
        if variant == "pruned-fp16" and key.startswith(("cond_stage_model.", "embedder.")):
            continue
        dt = torch.float16 if variant != "full" and key not in CHECKPOINT_ONLY_KEYS else DTYPES[dtype]
        state[key] = torch.empty(shape, dtype=dt, device="meta")
    pruned = variant == "pruned-fp16"
    model = meta_model(text_encoder=not pruned, image_encoder=not pruned)
    load_state_into(model, state, variant)
    assert model.unet.input_blocks[0][0].weight.dtype == (torch.float32 if variant == "full" else torch.float16)
    assert (model.cond_stage_model is None) == pruned


def _tiny_state():
    return load_file(str(TINY / "model.safetensors"))


@pytest.mark.parametrize("layout", ["ckpt", "safetensors", "fp16", "pruned-fp16"])
def test_tiny_fixture_loads_in_every_layout(layout, tmp_path):
    tiny_checkpoint(tmp_path, "source")  # brings TC-Tiny.json along
    state = {k: v.float() for k, v in _tiny_state().items()}
    stem = f"tiny-{layout}"
    (tmp_path / f"{stem}.yaml").write_text((TINY / "config.yaml").read_text())
    if layout == "ckpt":
        path = tmp_path / f"{stem}.ckpt"
        torch.save({"state_dict": state, "global_step": 1}, path)
    else:
        if layout != "safetensors":
            state = {k: v if k in CHECKPOINT_ONLY_KEYS else v.half() for k, v in state.items()}
        if layout == "pruned-fp16":
            state = {k: v for k, v in state.items() if not k.startswith(("cond_stage_model.", "embedder."))}
        path = tmp_path / f"{stem}.safetensors"
        save_file(state, str(path))
    model = load_model(path)
    expected_dtype = torch.float32 if layout in ("ckpt", "safetensors") else torch.float16
    w = model.unet.out[2].weight
    assert w.dtype == expected_dtype and w.device.type == "cpu"
    assert torch.equal(w.float(), _tiny_state()["model.diffusion_model.out.2.weight"].float())
    assert (model.cond_stage_model is None) == (layout == "pruned-fp16")
    assert (model.embedder is None) == (layout == "pruned-fp16")
    assert not any(p.is_meta for p in model.parameters())
    # fp16 stays fp16 unless asked: no silent fp32 copy of half weights.
    assert load_model(path, dtype=torch.float32).unet.out[2].weight.dtype == torch.float32


def test_yaml_next_to_checkpoint_overrides_the_weights(tmp_path):
    path = tiny_checkpoint(tmp_path)
    assert load_model(path).config == from_original_yaml(TINY / "config.yaml")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-marker",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load evil.ckpt"):
        read_state_dict(path)
    assert not (tmp_path / "pwned-marker").exists()


def test_key_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    state = _tiny_state()
    del state["model.diffusion_model.out.2.bias"]
    state["model.diffusion_model.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_model(path, config=from_original_yaml(TINY / "config.yaml"))
    msg = str(err.value)
    assert "missing keys: model.diffusion_model.out.2.bias" in msg
    assert "unexpected keys: model.diffusion_model.extra.weight" in msg


def test_wrong_shape_is_named(tmp_path):
    state = _tiny_state()
    state["model.diffusion_model.out.2.bias"] = torch.zeros(7, dtype=torch.float16)
    path = tmp_path / "shape.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"out\.2\.bias \(7,\)"):
        load_model(path, config=from_original_yaml(TINY / "config.yaml"))


def test_integer_tensors_are_named_when_the_files_dtype_is_kept(tmp_path):
    """With no dtype asked for, a load keeps the file's: an integer weight must be named, not reach
    load_state_dict (which raises from deep inside torch)."""
    state = _tiny_state()
    state["model.diffusion_model.out.2.bias"] = state["model.diffusion_model.out.2.bias"].to(torch.int64)
    path = tmp_path / "ints.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"1 of its tensors are not floating point \(model\.diffusion_model\.out\.2\.bias\)"):
        load_model(path, config=from_original_yaml(TINY / "config.yaml"))


def test_unreadable_and_missing_files_get_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="download it again"):
        read_state_dict(junk)


def test_foreign_checkpoint_is_not_mistaken_for_tooncrafter(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(path))
    with pytest.raises(CheckpointError, match="sd15.safetensors is not a ToonCrafter or DynamiCrafter checkpoint"):
        load_model(path)


def test_pickle_without_tensors_is_rejected(tmp_path):
    # A legacy (non-zip) pickle is read with weights_only too, and is no state dict of tensors.
    path = tmp_path / "legacy.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(CheckpointError):
        read_state_dict(path)


@pytest.mark.parametrize("weight_dtype", [None, torch.float16, torch.float8_e4m3fn])
def test_a_deferred_unet_is_read_later_into_exactly_the_whole_load(tmp_path, weight_dtype):
    """`defer_unet` reads everything but the UNet (which stays on meta, unread), and
    `load_deferred_unet` then gives the same tensors, dtypes and device as loading whole."""
    from tooncrafter_core.weights import checkpoint

    path = tiny_checkpoint(tmp_path)
    read = []
    original = checkpoint.read_state_dict

    def recording(p, keep=None):
        state = original(p, keep)
        read.append(set(state))
        return state

    whole = checkpoint.load_for(path, torch.float32, weight_dtype)
    checkpoint.read_state_dict = recording
    try:
        deferred = checkpoint.load_for(path, torch.float32, weight_dtype, defer_unet=True)
        assert all(p.is_meta for p in deferred.unet.parameters())
        assert not any(p.is_meta for name, p in deferred.named_parameters() if not name.startswith("model."))
        checkpoint.move_model(deferred, "cpu")  # leaves the unread UNet alone
        checkpoint.load_deferred_unet(deferred, "cpu")
    finally:
        checkpoint.read_state_dict = original
    assert len(read) == 2 and not any(k.startswith("model.diffusion_model.") for k in read[0])
    assert read[1] and all(k.startswith("model.diffusion_model.") for k in read[1])
    a, b = whole.state_dict(), deferred.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and b[k].device.type == "cpu" and torch.equal(a[k].float(), b[k].float()), k
    checkpoint.load_deferred_unet(deferred)  # nothing left to read: no second read
    assert len(read) == 2


def test_a_deferred_unet_with_a_missing_key_is_refused_before_anything_runs(tmp_path):
    path = tiny_checkpoint(tmp_path)
    state = load_file(str(path))
    del state["model.diffusion_model.out.2.weight"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"model\.diffusion_model\.out\.2\.weight"):
        load_model(path, defer_unet=True)


def test_our_safetensors_reader_gives_what_the_safetensors_package_gives(tmp_path):
    """Every dtype the releases and conversions use, 0-d and empty tensors, and `keep`."""
    from tooncrafter_core.weights.safetensors_file import read_tensors

    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "fp8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "fp8b": torch.randn(4, generator=g).to(torch.float8_e5m2),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    ours, theirs = read_tensors(path), load_file(str(path))
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape, k
        assert torch.equal(ours[k].reshape(-1).view(torch.uint8), theirs[k].reshape(-1).view(torch.uint8)), k
    assert set(read_tensors(path, keep=lambda k: k.startswith("f"))) == {"f32", "f16", "fp8", "fp8b"}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) - 10], "truncated or damaged"),
        (lambda b: b[:5], "shorter than the 8-byte header"),
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "does not fit the file"),
        (lambda b: b[:8] + b"\xff" * (len(b) - 8), "header is not JSON"),
    ],
)
def test_a_damaged_safetensors_file_is_named_with_what_is_wrong(tmp_path, damage, message):
    path = tiny_checkpoint(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=f"{path.name} is not a readable safetensors file.*{message}.*download it again"):
        load_model(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path, defer_unet=True)
