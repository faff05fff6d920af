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
    with pytest.raises(CheckpointError, match="sd15.safetensors is not a ToonCrafter checkpoint"):
        load_model(path)


def test_pickle_without_tensors_is_rejected(tmp_path):
    # A legacy (non-zip) pickle is read with weights_only too, and is no state dict of tensors.
    path = tmp_path / "legacy.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(CheckpointError):
        read_state_dict(path)
