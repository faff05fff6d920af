"""The random-weight fixtures of the pruned workflow load where the workflow loads them: the
ViT-H files in the pinned ComfyUI (in-process, CPU), the tiny pruned checkpoint in our loader."""

from __future__ import annotations

import gc
import logging
import sys

import pytest
import torch
from comfy_harness import COMFYUI_SOURCE
from pruned_fixtures import (
    CLIP_VISION_NAME,
    PRUNED_STEM,
    TEXT_ENCODER_NAME,
    VIT_H_TEXT,
    VIT_H_VISION,
    WIDE_TINY_CONFIG,
    default_cache_dir,
    make_vit_h_clip_vision,
    make_vit_h_text_encoder,
    make_wide_tiny_pruned,
    spec_tensor,
    stage_pruned_models,
    vit_h_text_specs,
    vit_h_vision_specs,
)
from safetensors import safe_open

from tooncrafter_core.conditioning import check_vision_tokens, external_text_context, join_context
from tooncrafter_core.guidance import unet_output
from tooncrafter_core.weights.checkpoint import TEXT_PREFIX, VISION_PREFIX, load_model


@pytest.fixture(scope="module")
def comfy_cpu():
    """ComfyUI's `comfy` package imported in-process, CPU only; models it loaded are dropped after."""
    if str(COMFYUI_SOURCE) not in sys.path:
        # Appended, not prepended: ComfyUI's top-level `nodes`/`utils` must not shadow anything.
        sys.path.append(str(COMFYUI_SOURCE))
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # the pinned ComfyUI tree is shared: leave no __pycache__ in it
    try:
        import comfy.cli_args

        # model_management reads this once, at import, to pick its device.
        comfy.cli_args.args.cpu = True
        import comfy.clip_vision
        import comfy.model_management
        import comfy.sd
    finally:
        sys.dont_write_bytecode = dont_write
    assert comfy.model_management.get_torch_device().type == "cpu"
    yield comfy
    comfy.model_management.unload_all_models()
    gc.collect()


@pytest.fixture(scope="module")
def text_file():
    return make_vit_h_text_encoder(default_cache_dir() / TEXT_ENCODER_NAME)


@pytest.fixture(scope="module")
def vision_file():
    return make_vit_h_clip_vision(default_cache_dir() / CLIP_VISION_NAME)


@pytest.fixture(scope="module")
def tiny_file():
    return make_wide_tiny_pruned(default_cache_dir())


@pytest.fixture(scope="module")
def comfy_clip(comfy_cpu, text_file):
    """What CLIPLoader(clip_name, type="stable_diffusion") returns."""
    clip_type = getattr(comfy_cpu.sd.CLIPType, "stable_diffusion".upper())
    return comfy_cpu.sd.load_clip(ckpt_paths=[str(text_file)], clip_type=clip_type)


@pytest.fixture(scope="module")
def comfy_clip_vision(comfy_cpu, vision_file):
    """What CLIPVisionLoader(clip_name) returns."""
    clip_vision = comfy_cpu.clip_vision.load(str(vision_file))
    assert clip_vision is not None, "ComfyUI did not recognise the vision file"
    return clip_vision


@pytest.fixture(scope="module")
def text_features(comfy_clip):
    """ComfyUI's SD2 text features, (1 77 1024) per prompt, as the ToonCrafter nodes take them."""
    return {p: comfy_clip.encode_from_tokens(comfy_clip.tokenize(p)) for p in ("a cat", "a dog")}


@pytest.fixture(scope="module")
def vision_tokens(comfy_cpu, comfy_clip_vision):
    """All tokens after ComfyUI's ViT-H vision transformer, (1 257 1280), as the ToonCrafter nodes take them."""
    comfy_cpu.model_management.load_models_gpu([comfy_clip_vision.patcher])
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return comfy_clip_vision.model(pixel_values=pixels, intermediate_output=-2)[0]


def _file_keys(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def _same_tensors(path, module: torch.nn.Module, keys) -> list[str]:
    """Keys whose tensor in `module` differs from the file's."""
    state = module.state_dict()
    with safe_open(str(path), "pt") as f:
        return [k for k in keys if not torch.equal(state[k].to(torch.float16), f.get_tensor(k))]


def _sample_keys(keys: set[str], last_layer: int) -> list[str]:
    """Embeddings, norms and projections, plus the first and last layer: every kind of tensor."""
    return sorted(k for k in keys if ".layers." not in k or ".layers.0." in k or f".layers.{last_layer}." in k)


def test_cached_files_match_the_current_generator(text_file, vision_file):
    # A cached file from an older generator (without a FIXTURE_VERSION bump) would be caught here.
    for path, specs in ((text_file, vit_h_text_specs()), (vision_file, vit_h_vision_specs())):
        assert _file_keys(path) == {key for key, _, _ in specs}
        key, shape, init = next(s for s in reversed(specs) if s[2] == "normal" and len(s[1]) == 1)
        with safe_open(str(path), "pt") as f:
            assert torch.equal(f.get_tensor(key), spec_tensor(key, shape, init)), f"{path.name}: {key} is stale"


def test_text_encoder_loads_as_comfyui_sd2_clip_and_encodes(comfy_cpu, comfy_clip, text_file, text_features):
    model = comfy_clip.cond_stage_model
    assert isinstance(model, comfy_cpu.text_encoders.sd2_clip.SD2ClipModel)
    tower = model.clip_h.transformer
    assert tower.num_layers == VIT_H_TEXT.layers
    keys = _file_keys(text_file)
    assert set(tower.state_dict()) == keys, "ComfyUI's SD2 text model and the file differ in keys"
    assert _same_tensors(text_file, tower, _sample_keys(keys, VIT_H_TEXT.layers - 1)) == []

    cat, dog = text_features["a cat"], text_features["a dog"]
    assert cat.shape == (1, 77, VIT_H_TEXT.width)
    assert torch.isfinite(cat).all() and torch.isfinite(dog).all()
    assert not torch.allclose(cat, dog), "the prompt does not reach the random text encoder"


def test_clip_vision_loads_as_comfyui_vit_h_and_gives_257_tokens(comfy_clip_vision, vision_file, vision_tokens):
    model = comfy_clip_vision.model
    assert len(model.vision_model.encoder.layers) == VIT_H_VISION.layers
    assert comfy_clip_vision.image_size == VIT_H_VISION.image_size
    keys = _file_keys(vision_file)
    assert set(model.state_dict()) == keys, "ComfyUI's ViT-H vision model and the file differ in keys"
    assert _same_tensors(vision_file, model, _sample_keys(keys, VIT_H_VISION.layers - 1)) == []
    assert vision_tokens.shape == (1, VIT_H_VISION.num_tokens, VIT_H_VISION.width)
    assert torch.isfinite(vision_tokens).all()


def test_tiny_pruned_checkpoint_loads_without_encoders_and_infers_its_config(tiny_file, caplog):
    keys = _file_keys(tiny_file)
    assert not any(k.startswith((TEXT_PREFIX, VISION_PREFIX)) for k in keys)
    assert {"alphas_cumprod", "scale_arr"} <= keys
    assert not tiny_file.with_suffix(".yaml").exists()
    with caplog.at_level(logging.WARNING, logger="tooncrafter_core"):
        model = load_model(tiny_file)
    assert "schedule buffer" not in caplog.text, "the fp16 schedule buffers should match the config's"
    assert model.cond_stage_model is None and model.embedder is None
    assert model.config == WIDE_TINY_CONFIG
    assert model.unet.out[2].weight.dtype == torch.float16


def test_tiny_pruned_checkpoint_is_deterministic_and_fully_initialised(tmp_path):
    a = make_wide_tiny_pruned(tmp_path / "a")
    b = make_wide_tiny_pruned(tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    with safe_open(str(a), "pt") as f:
        bad = [k for k in f.keys() if not torch.isfinite(f.get_tensor(k)).all()]
        # Norms are ones/zeros by design; every other weight matrix or kernel must be random.
        flat = [k for k in f.keys() if f.get_tensor(k).ndim >= 2 and f.get_tensor(k).float().std() == 0]
    assert bad == [] and flat == []


def test_comfyui_encoders_feed_the_tiny_pruned_model(text_features, vision_tokens, tiny_file):
    """ComfyUI's text features and vision tokens -> our context -> one finite UNet call."""
    config = WIDE_TINY_CONFIG
    model = load_model(tiny_file, dtype=torch.float32)
    text = external_text_context(text_features["a cat"], config)
    check_vision_tokens(vision_tokens, config)
    with torch.inference_mode():
        image = model.image_proj_model(vision_tokens.float())
        context = join_context(text.float(), image)
        frames, (h, w) = config.frames, (8, 8)
        x = torch.randn(1, config.unet.out_channels, frames, h, w, generator=torch.Generator().manual_seed(2))
        v = unet_output(model.unet, x, torch.tensor([500]), context, torch.zeros_like(x), torch.tensor([10]))
    n_image = config.resampler.num_queries * config.resampler.video_length
    assert context.shape == (1, config.unet.text_tokens + n_image, config.unet.context_dim)
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_staged_files_are_what_the_workflow_loaders_list(comfy_cpu, tmp_path, monkeypatch):
    import folder_paths

    staged = stage_pruned_models(tmp_path / "models")
    for folder, name in (("text_encoders", TEXT_ENCODER_NAME), ("clip_vision", CLIP_VISION_NAME)):
        monkeypatch.setitem(
            folder_paths.folder_names_and_paths, folder, ([str(tmp_path / "models" / folder)], folder_paths.supported_pt_extensions)
        )
        monkeypatch.setattr(folder_paths, "filename_list_cache", {})
        assert name in folder_paths.get_filename_list(folder)
        assert folder_paths.get_full_path(folder, name) is not None
    assert staged["tooncrafter"].name == f"{PRUNED_STEM}.safetensors"
    assert all(p.is_file() for p in staged.values())
    assert staged["text_encoder"].samefile(default_cache_dir() / TEXT_ENCODER_NAME)
