"""`convert`: precision, pruning and merged LoRAs round-trip through our loader; replay errors of
the converted files against the recorded references; overflow during sampling is caught."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import gradient_keyframes, random_lora, reference_cases, save_peft_lora, tiny_checkpoint
from PIL import Image
from safetensors import safe_open

from tooncrafter_core.__main__ import main
from tooncrafter_core.commands.replay import compare, run_case
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.sampling import SamplingOverflowError
from tooncrafter_core.settings import RuntimeOptions, SamplingConfig
from tooncrafter_core.weights.checkpoint import TEXT_PREFIX, UNET_PREFIX, VISION_PREFIX, load_model, read_state_dict
from tooncrafter_core.weights.convert import KEEP_FP32, convert
from tooncrafter_core.weights.lora import LoraSpec, merge_specs

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.mark.parametrize("parts", ["all", "unet"])
@pytest.mark.parametrize("name", sorted(DTYPES))
def test_convert_round_trips_in_every_dtype(ckpt, tmp_path, name, parts):
    dtype = DTYPES[name]
    out = tmp_path / "converted" / f"tiny_{name}.safetensors"
    assert main(["convert", str(ckpt), str(out), "--dtype", name, "--parts", parts]) == 0
    source, written = read_state_dict(ckpt), read_state_dict(out)
    assert written.keys() == source.keys()
    for key, tensor in source.items():
        if key in KEEP_FP32:
            expected = tensor.float()
        elif parts == "unet" and not key.startswith(UNET_PREFIX):
            expected = tensor
        else:
            expected = tensor.to(dtype)
        assert written[key].dtype == expected.dtype and torch.equal(written[key], expected), key
    # The architecture files travel with it, and the loader reads it back as it is.
    assert out.with_suffix(".yaml").is_file() and (out.parent / "TC-Tiny.json").is_file()
    model = load_model(out)
    assert model.unet.out[2].weight.dtype == dtype
    assert model.vae.encoder.conv_in.weight.dtype == (dtype if parts == "all" else torch.float16)
    with safe_open(str(out), "pt") as f:
        settings = json.loads(f.metadata()["tooncrafter_convert"])
    assert settings == {"source": ckpt.name, "dtype": str(dtype)[6:], "parts": parts, "prune_encoders": False, "loras": []}


def test_pruned_conversion_loads_without_encoders(ckpt, tmp_path):
    out = tmp_path / "pruned.safetensors"
    convert(ckpt, out, torch.float16, prune_encoders=True)
    keys = read_state_dict(out).keys()
    assert not any(k.startswith((TEXT_PREFIX, VISION_PREFIX)) for k in keys)
    model = load_model(out)
    assert model.cond_stage_model is None and model.embedder is None
    assert out.stat().st_size < ckpt.stat().st_size


def test_merged_lora_checkpoint_equals_merging_at_load_time(ckpt, tmp_path):
    state = read_state_dict(ckpt)
    factors = random_lora({k[len(UNET_PREFIX):]: v for k, v in state.items() if k.startswith(UNET_PREFIX)})
    adapter = save_peft_lora(tmp_path / "peft", factors, alpha=8.0).parent
    out = tmp_path / "merged.safetensors"
    assert main(["convert", str(ckpt), str(out), "--dtype", "fp32", "--lora", f"{adapter}:0.4"]) == 0
    at_load = load_model(ckpt, dtype=torch.float32)
    merge_specs(at_load, [LoraSpec(adapter, 0.4)])
    converted = load_model(out)
    for (key, a), b in zip(at_load.state_dict().items(), converted.state_dict().values()):
        assert torch.equal(a, b), key
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["tooncrafter_convert"])["loras"] == ["peft:0.4"]


# Measured (torch 2.14, CPU), worst stage / final video, relative to the recorded fp32 run:
#   tiny-4f:  fp16 file + fp16 compute 1.10e-2 / 7.8e-3; bf16 file + bf16 compute 8.9e-2 / 7.0e-2;
#             bf16 file + fp32 compute (storage alone) 2.4e-2 / 2.2e-2
#   tiny-16f: fp16 + fp16 8.2e-3 / 7.6e-3; bf16 + bf16 7.1e-2 / 6.2e-2; bf16 + fp32 2.7e-2 / 2.7e-2
#   dc-interp512-8f-32x32: bf16 + fp32 4.4e-2 (its worst stage)
# The fixtures' weights are exact in fp16, so an fp16 file computing in fp32 stays at fp32 parity.
REPLAY_BOUNDS = {("fp16", "fp32"): 1e-4, ("fp16", "fp16"): 2e-2, ("bf16", "fp32"): 5e-2, ("bf16", "bf16"): 0.15}


# One case per layout family (the converter treats every case of a family alike): ToonCrafter's and
# DynamiCrafter's interpolation model, which has both families' differences (eps, plain decoder).
CONVERTED_CASES = [c for c in reference_cases() if c.name in ("tiny-4f-64x64", "dc-interp512-8f-32x32")]


@pytest.mark.parametrize("case", CONVERTED_CASES, ids=lambda p: p.name)
def test_replay_of_converted_files_stays_within_bounds(case, tmp_path):
    src = tiny_checkpoint(tmp_path / "src", case=case)
    for (stored, computed), bound in REPLAY_BOUNDS.items():
        out = tmp_path / f"{stored}.safetensors"
        if not out.exists():
            convert(src, out, DTYPES[stored])
        errors = compare(run_case(case, DTYPES[computed], "cpu", out), case)
        assert max(errors.values()) < bound, (stored, computed, errors)


def test_convert_refuses_to_overwrite_its_input_or_write_another_format(ckpt, tmp_path, caplog):
    assert main(["convert", str(ckpt), str(ckpt), "--dtype", "fp16"]) == 2
    assert "is the input" in caplog.text
    assert main(["convert", str(ckpt), str(tmp_path / "x.ckpt"), "--dtype", "fp16"]) == 2
    assert "must be a .safetensors file" in caplog.text
    assert read_state_dict(ckpt).keys()  # the input is intact


# ---------------------------------------------------------------------------------------------
# Overflow



def _overflowing(ckpt, dtype):
    """The tiny model with its first UNet convolution scaled by 1e5 (its largest weight, 0.42, becomes 4.2e4, still an fp16 number): its activations pass fp16's
    65504 (to inf, then NaN after the next GroupNorm) but stay finite in fp32, where the
    GroupNorm right after takes the scale out again."""
    model = load_model(ckpt, dtype=dtype)
    with torch.no_grad():
        model.unet.input_blocks[0][0].weight.mul_(1e5)
    return model


def test_an_injected_overflow_stops_sampling_with_the_fix(ckpt):
    start, end = gradient_keyframes()
    steps = []
    with pytest.raises(SamplingOverflowError, match=r"by step 1 of 3 while computing in float16; compute in bfloat16 or float32"):
        interpolate(_overflowing(ckpt, torch.float16), start, end, "", SamplingConfig(steps=3),
                    RuntimeOptions(dtype=torch.float16), callback=lambda i, x, x0: steps.append(i))
    assert steps == []  # stopped at the first step, before any host saw the NaNs
    video = interpolate(_overflowing(ckpt, torch.float32), start, end, "", SamplingConfig(steps=3))
    assert torch.isfinite(video).all()


def test_cli_names_the_dtype_option_on_overflow(ckpt, tmp_path, caplog, monkeypatch):
    import tooncrafter_core.commands.common as cli

    for name, color in (("a.png", (250, 40, 40)), ("b.png", (40, 40, 250))):
        Image.new("RGB", (64, 64), color).save(tmp_path / name)
    monkeypatch.setattr(cli, "load_for", lambda path, dtype, weight_dtype=None, **kwargs: _overflowing(path, dtype))
    monkeypatch.setattr(cli, "load_deferred_unet", lambda model, device: None)  # the overflowing UNet is in place
    code = main(["interpolate", "--ckpt", str(ckpt), "--start", str(tmp_path / "a.png"), "--end", str(tmp_path / "b.png"),
                 "--steps", "2", "--device", "cpu", "--dtype", "fp16", "--out", str(tmp_path / "out")])
    assert code == 3
    assert "--dtype bf16 or --dtype fp32" in caplog.text
    assert not (tmp_path / "out").exists()


def test_overflow_is_checked_every_few_steps_and_at_the_last():
    from tooncrafter_core.models.config import ScheduleConfig
    from tooncrafter_core.models.schedule import Schedule
    from tooncrafter_core.sampling import FINITE_CHECK_EVERY, Denoiser, ddim_plan, sample_ddim

    schedule = Schedule.from_config(ScheduleConfig())
    plan = ddim_plan(schedule, 8, "uniform_trailing", 0.0)

    def run(bad_from: int):
        calls = []

        def net(x, t):
            calls.append(len(calls))
            return torch.full_like(x, float("nan")) if len(calls) > bad_from else torch.zeros_like(x)

        seen = []
        try:
            sample_ddim(Denoiser(net, schedule), torch.randn(1, 4, 2, 8, 8), plan, callback=lambda i, x, x0: seen.append(i))
        except SamplingOverflowError as e:
            return seen, e.step
        return seen, None

    assert FINITE_CHECK_EVERY == 5
    assert run(bad_from=99) == (list(range(8)), None)
    assert run(bad_from=0) == ([], 1)
    assert run(bad_from=2) == ([0, 1, 2, 3, 4], 6)  # NaN from step 3 on, caught at the check of step 6
    assert run(bad_from=7) == ([0, 1, 2, 3, 4, 5, 6], 8)  # the last step is always checked
