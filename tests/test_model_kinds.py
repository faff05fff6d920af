"""The model kind as data: each member of the family (ToonCrafter, DynamiCrafter image-to-video 256 / 512 /
1024, DynamiCrafter 512 interpolation) read from its original yaml, its schedule buffers or its layout;
the full-size layouts of the releases; and the kind deciding the prediction, the concat condition and
the decoder."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from helpers import DC_I2V, DC_I2V_256, DC_INTERP, TINY, gradient_keyframes, manifest, tiny_checkpoint
from safetensors.torch import load_file

from tooncrafter_core.errors import InputError
from tooncrafter_core.keyframes import KeyframeEncoding, concat_condition, encode_keyframes
from tooncrafter_core.models.config import (
    IMAGE_TO_VIDEO,
    INTERPOLATION,
    ModelConfig,
    ScheduleConfig,
    from_original_yaml,
)
from tooncrafter_core.models.schedule import SCHEDULE_KEYS, Schedule
from tooncrafter_core.models.tooncrafter import ToonCrafter
from tooncrafter_core.models.vae import AutoencoderKL, AutoencoderKLDualRef
from tooncrafter_core.pipeline import animate, interpolate
from tooncrafter_core.sampling import ddim_plan
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.weights.checkpoint import (
    CHECKPOINT_ONLY_KEYS,
    infer_config,
    infer_schedule,
    load_model,
    rename_keys,
)

# case, family, tasks, prediction, zero SNR, dynamic rescale, reference decoder, fs meaning
KINDS = [
    (TINY, "ToonCrafter", (INTERPOLATION,), "v", True, True, True, "fps"),
    (DC_I2V_256, "DynamiCrafter", (IMAGE_TO_VIDEO,), "eps", False, False, False, "frame stride"),
    # The 512 inference yaml serves both 512 releases (image-to-video and interpolation).
    (DC_I2V, "DynamiCrafter", (IMAGE_TO_VIDEO, INTERPOLATION), "v", True, True, False, "fps"),
    (DC_INTERP, "DynamiCrafter", (INTERPOLATION,), "v", True, True, False, "fps"),
]


@pytest.mark.parametrize("case,family,tasks,prediction,zsnr,rescale,reference,fs", KINDS, ids=lambda v: getattr(v, "name", None))
def test_each_kind_is_read_from_its_tiny_config(case, family, tasks, prediction, zsnr, rescale, reference, fs):
    config = from_original_yaml(case / "config.yaml")
    assert (config.family, config.tasks, config.fs_meaning) == (family, tasks, fs)
    schedule = config.schedule
    assert (schedule.parameterization, schedule.rescale_betas_zero_snr, schedule.use_dynamic_rescale) == (prediction, zsnr, rescale)
    assert config.vae.reference_decoder == reference
    with torch.device("meta"):
        model = ToonCrafter(config)
    assert isinstance(model.vae, AutoencoderKLDualRef if reference else AutoencoderKL)
    assert model.schedule.prediction.kind == prediction
    assert (model.schedule.scale_arr is not None) == rescale
    # DynamiCrafter 256's image cross-attention has its learnt scale.
    alphas = [k for k in model.state_dict() if k.endswith("attn2.alpha")]
    assert bool(alphas) == (prediction == "eps")


@pytest.mark.parametrize("case", [TINY, DC_I2V_256, DC_I2V, DC_INTERP], ids=lambda p: p.name)
def test_the_schedule_buffers_say_the_process(case):
    """Without a yaml, the released files' schedule buffers tell zero SNR, the prediction and the rescale."""
    state = load_file(str(case / "model.safetensors"))
    shapes = {k: tuple(v.shape) for k, v in rename_keys(state).items()}
    inferred = infer_schedule({k: state[k] for k in SCHEDULE_KEYS if k in state}, shapes)
    expected = from_original_yaml(case / "config.yaml").schedule
    assert inferred == expected


def _buffers(schedule: ScheduleConfig) -> dict:
    """Schedule buffers as a release carries them (a v model registers its sqrt_recip tables as zeros)."""
    built = Schedule.from_config(schedule)
    out = dict(built.buffers())
    zeros = schedule.parameterization == "v"
    out["sqrt_recip_alphas_cumprod"] = torch.zeros(1000) if zeros else 1 / built.sqrt_alphas_cumprod
    return out


def test_the_1024_kind_is_the_512_layout_with_its_own_size_and_rescale_base():
    """DynamiCrafter 1024: the 512 network at 576x1024 with a dynamic-rescale base of 0.3 (0.7 for 512)."""
    shapes = manifest()
    full = {k: v[0] for k, v in shapes.items() if not k.startswith("first_stage_model.decoder.attn_refinement")}
    kind_512 = infer_config(_dynamicrafter_layout(full), _buffers(ScheduleConfig()))
    kind_1024 = infer_config(_dynamicrafter_layout(full), _buffers(ScheduleConfig(base_scale=0.3)))
    assert kind_512.pixel_size == (320, 512) and kind_1024.pixel_size == (576, 1024)
    assert kind_1024.schedule.base_scale == pytest.approx(0.3) and kind_512.schedule.base_scale == pytest.approx(0.7)
    assert kind_1024.tasks == (IMAGE_TO_VIDEO,) and kind_1024.fs_default == 10 and kind_512.fs_default == 24
    assert kind_1024.kind_name == "DynamiCrafter 1024 image-to-video"
    # The base shapes the sampler: with 4 trailing steps the second step's rescale is s(249)/s(499),
    # the ramp from 1 to the base over the first 400 timesteps.
    s512 = ddim_plan(Schedule.from_config(kind_512.schedule), 4, "uniform_trailing", 0.0)
    s1024 = ddim_plan(Schedule.from_config(kind_1024.schedule), 4, "uniform_trailing", 0.0)
    assert [round(s.rescale, 4) for s in s512] == [1.0, 1.0, 1.1611, 1.0]
    assert s1024[2].rescale == pytest.approx((1 - 0.7 * 249 / 399) / 0.3, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The releases' full-size layouts


def _dynamicrafter_layout(tooncrafter: dict[str, tuple]) -> dict[str, tuple]:
    """DynamiCrafter 512's keys from ToonCrafter's real manifest: the same UNet, Resampler and encoders, the
    plain decoder (ToonCrafter's video decoder less its 148 temporal and reference-fusion tensors)."""
    extra = ("attn_refinement", "time_stack", "mix_factor", "time_mix_conv")
    return {
        k: v for k, v in tooncrafter.items()
        if not (k.startswith("first_stage_model.decoder.") and any(e in k for e in extra))
    }


def _dynamicrafter_256_layout(tooncrafter: dict[str, tuple]) -> dict[str, tuple]:
    """The 256 release: the fs MLP named `framestride_embed`, a learnt scalar `alpha` on every image
    cross-attention, no dynamic-rescale table."""
    out = {}
    for k, v in _dynamicrafter_layout(tooncrafter).items():
        if k == "scale_arr":
            continue
        out[k.replace(".fps_embedding.", ".framestride_embed.")] = v
        if k.endswith("attn2.to_k_ip.weight"):
            out[k.replace("to_k_ip.weight", "alpha")] = ()
    return out


LAYOUTS = {
    "tooncrafter_512_interp": lambda m: m,
    "dynamicrafter_512 (and 1024, 512_interp)": _dynamicrafter_layout,
    "dynamicrafter_256": _dynamicrafter_256_layout,
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_release_layout_loads_with_zero_missing_or_unexpected_keys(name):
    shapes = LAYOUTS[name]({k: v[0] for k, v in manifest().items()})
    buffers = {}
    if name == "dynamicrafter_256":  # what its buffers say (an eps model's sqrt_recip tables are not zero)
        buffers = _buffers(ScheduleConfig(rescale_betas_zero_snr=False, parameterization="eps", use_dynamic_rescale=False))
    config = infer_config(shapes, buffers)
    with torch.device("meta"):
        model = ToonCrafter(config)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: v for k, v in rename_keys(shapes).items() if k not in CHECKPOINT_ONLY_KEYS}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert {k: v for k, v in theirs.items() if ours[k] != v} == {}
    assert config.vae.reference_decoder == (name == "tooncrafter_512_interp")


# ---------------------------------------------------------------------------------------------
# The kind at work


def test_concat_condition_follows_the_keyframes():
    z = torch.randn(1, 4, 5, 2, 2)
    interp = concat_condition(z, INTERPOLATION)
    assert torch.equal(interp[:, :, 0], z[:, :, 0]) and torch.equal(interp[:, :, -1], z[:, :, -1])
    assert not interp[:, :, 1:-1].any()
    i2v = concat_condition(z, IMAGE_TO_VIDEO)
    assert all(torch.equal(i2v[:, :, t], z[:, :, 0]) for t in range(5))
    assert KeyframeEncoding(torch.zeros(1, 1, 4, 2, 2), torch.zeros(1, 1, 4, 2, 2), []).task == IMAGE_TO_VIDEO
    assert KeyframeEncoding(torch.zeros(1, 2, 4, 2, 2), torch.zeros(1, 2, 4, 2, 2), []).task == INTERPOLATION


def test_a_plain_decoder_keeps_no_reference_features(tmp_path):
    model = load_model(tiny_checkpoint(tmp_path, case=DC_I2V), dtype=torch.float32)
    image = torch.zeros(1, 3, 32, 64)
    with torch.inference_mode():
        enc = encode_keyframes(model.vae, image)
    assert enc.refs == [] and enc.mean.shape[1] == 1


@pytest.fixture(scope="module")
def i2v_model(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("i2v"), case=DC_I2V), dtype=torch.float32)


@pytest.fixture(scope="module")
def tooncrafter(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("tc")), dtype=torch.float32)


def test_animate_draws_a_clip_that_starts_from_the_image(i2v_model):
    image = gradient_keyframes(32, 64)[0]
    video = animate(i2v_model, image, "a boat", SamplingConfig(steps=2), generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 3, i2v_model.config.frames, 32, 64) and torch.isfinite(video).all()
    again = animate(i2v_model, image, "a boat", SamplingConfig(steps=2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(video, again)


def test_a_model_of_the_other_kind_is_named_with_what_to_use(i2v_model, tooncrafter):
    start, end = gradient_keyframes(32, 64)
    with pytest.raises(InputError, match=r"is a DynamiCrafter 64 image-to-video model, not one for interpolation: use it "
                                         r"with `animate` \(one image\)"):
        i2v_only = replace(i2v_model.config, tasks=(IMAGE_TO_VIDEO,))
        model = i2v_model
        model.config, original = i2v_only, model.config
        try:
            interpolate(model, start, end, "x", SamplingConfig(steps=1))
        finally:
            model.config = original
    with pytest.raises(InputError, match=r"is a ToonCrafter 64 interpolation model, not one for image-to-video: use it "
                                         r"with `interpolate` \(two keyframes\)"):
        animate(tooncrafter, gradient_keyframes()[0], "x", SamplingConfig(steps=1))


def test_the_yaml_maps_interp_mode_and_the_256_fs_meaning(tmp_path):
    raw = yaml.safe_load((DC_I2V / "config.yaml").read_text())
    raw["model"]["params"]["interp_mode"] = True
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(DC_I2V / "DC-Tiny.json", tmp_path)
    assert from_original_yaml(tmp_path / "c.yaml").tasks == (INTERPOLATION,)
    assert from_original_yaml(DC_I2V_256 / "config.yaml").fs_default == 3
    assert from_original_yaml(DC_INTERP / "config.yaml").fs_default == 5
    assert from_original_yaml(TINY / "config.yaml").fs_default == 10
    assert isinstance(ModelConfig().kind_name, str) and ModelConfig().kind_name == "ToonCrafter 512 interpolation"


def test_released_files_keep_their_catalogue_kind(tmp_path):
    """The catalogue names which conditioning a release was trained with where the weights cannot tell."""
    from tooncrafter_core.weights import catalog

    entry = catalog.find("dynamicrafter_512_interp_fp16_pruned.safetensors")
    assert entry is not None and entry.tasks == (INTERPOLATION,) and entry.fs_default == 5
    for f in catalog.DYNAMICRAFTER:
        assert f.tasks and f.url.startswith("https://huggingface.co/") and f.name.startswith("dynamicrafter_")
    assert {Path(f.name).suffix for f in catalog.FAMILY} <= {".ckpt", ".safetensors"}
