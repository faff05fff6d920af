"""Stock ControlNets on the native MODEL (real ComfyUI 0.3.64, CPU): ComfyUI's ControlNetLoader loads the
sketch encoder at the released width (random weights: an SD 2.1-layout ControlNet with a 1-channel hint)
and ControlNetApplyAdvanced steers the full-size UNet (random weights, 2 frames at 64x64) on every frame;
its residuals equal sketch guidance's for the same weights and drawing."""

from __future__ import annotations

import pytest
from comfy_harness import run_in_comfy

SCRIPT = """
    import json
    import comfy.controlnet
    import nodes as comfy_nodes
    from safetensors.torch import save_file
    sys.path.insert(0, {tests!r})
    from helpers import TINY_SKETCH_ENCODER, tiny_sketch_encoder
    from tc_pack.nodes import managed_model, native_model
    from tc_pack.nodes.controls import FramesControl
    from tc_pack.nodes.types import FS_KEY, POSTERIOR_KEY
    from tc_pack.tooncrafter_core.models.config import ModelConfig
    from tc_pack.tooncrafter_core.models.init import normal_init_
    from tc_pack.tooncrafter_core.models.schedule import Schedule
    from tc_pack.tooncrafter_core.models.sketch_encoder import SketchEncoder
    from tc_pack.tooncrafter_core.models.unet import UNetModel
    from tc_pack.tooncrafter_core.keyframes import KeyframeEncoding

    out = {{}}
    g = torch.Generator().manual_seed(0)
    controlnets = folder / "controlnet"
    controlnets.mkdir()
    folder_paths.add_model_folder_path("controlnet", str(controlnets), is_default=True)
    with torch.device("meta"):
        encoder = SketchEncoder()
    encoder = encoder.to_empty(device="cpu")
    normal_init_(encoder, 0.02, g)
    save_file({{k: v.half().contiguous() for k, v in encoder.state_dict().items()}}, str(controlnets / "sketch_full.safetensors"))
    del encoder
    tiny_sketch_encoder(controlnets / TINY_SKETCH_ENCODER)
    try:
        comfy_nodes.ControlNetLoader().load_controlnet(TINY_SKETCH_ENCODER)
        out["tiny_stock_load"] = "loaded"
    except Exception as e:
        out["tiny_stock_load"] = f"{{type(e).__name__}}: {{str(e)[:300]}}"
    (stock,) = comfy_nodes.ControlNetLoader().load_controlnet("sketch_full.safetensors")
    out["stock_class"] = type(stock).__name__

    # The full-size UNet with random weights around the native model; conditioning made by hand.
    config = ModelConfig()
    with torch.device("meta"):
        unet = UNetModel(config.unet)
    unet = unet.to_empty(device="cpu")
    normal_init_(unet, 0.02, g)
    unet = unet.to(torch.bfloat16)
    model = native_model.native_patcher(unet, Schedule.from_config(config.schedule), config.vae.scale_factor,
                                        torch.bfloat16, torch.device("cpu"), torch.device("cpu"))
    frames, h, w = 2, 8, 8
    context = torch.randn(1, 77 + 16 * 16, 1024, generator=g)
    enc = KeyframeEncoding(torch.randn(1, 2, 4, h, w, generator=g), torch.full((1, 2, 4, h, w), -4.0), [])
    options = {{FS_KEY: torch.tensor([10]), POSTERIOR_KEY: enc}}
    pos, neg = [[context, dict(options)]], [[torch.zeros_like(context), dict(options)]]
    latent = {{"samples": torch.zeros(1, 4, frames, h, w)}}
    yy = torch.linspace(0, 1, 8 * h)[:, None].expand(8 * h, 8 * w)
    drawing = torch.where((yy * 8).floor() % 2 == 0, 1.0, 0.1)[None, :, :, None].expand(1, 8 * h, 8 * w, 3).contiguous()

    def ksample(p, n):
        return comfy_nodes.KSampler().sample(model, 3, 1, 2.0, "euler", "simple", p, n, latent)[0]["samples"]

    base = ksample(pos, neg)
    apply = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet
    steered = ksample(*apply(pos, neg, stock, drawing, 1.0, 0.0, 1.0))
    zero = ksample(*apply(pos, neg, stock, drawing, 0.0, 0.0, 1.0))
    out["changed"] = float((steered - base).norm() / base.norm())
    out["strength0_equal"] = bool(torch.equal(zero, base))
    out["finite"] = bool(torch.isfinite(steered).all())

    # The same weights through Load ToonCrafter Sketch Encoder + the sketch control, residual for residual.
    ours = managed_model.sketch_control(managed_model.load_sketch_encoder("sketch_full.safetensors"),
                                        drawing.expand(frames, -1, -1, -1), "", 1.0, "crop", latent["samples"].shape)
    adapted = FramesControl(stock.copy().set_cond_hint(drawing.movedim(-1, 1), 1.0, (0.0, 1.0)))
    import comfy.model_management as mm
    mm.load_models_gpu([model] + ours.get_models() + adapted.get_models())
    sigma = torch.tensor([0.7])
    x = torch.randn(1, 4, frames, h, w, generator=g)
    cond = {{"c_crossattn": context}}
    for control in (ours, adapted):
        control.pre_run(model.model, lambda p: model.model.model_sampling.percent_to_sigma(p))
    ours.dtype = torch.float32  # as ComfyUI runs its ControlNets on the CPU (the UNet here computes in bf16)
    a = ours.get_control(x, sigma, cond, 1, {{}})
    b = adapted.get_control(x, sigma, cond, 1, {{}})
    out["residual_rel"] = max(float((ra.float() - rb.float()).norm() / rb.float().norm())
                              for key in ("output", "middle") for ra, rb in zip(a[key], b[key]))
    out["residual_counts"] = [len(a["output"]), len(b["output"]), len(a["middle"]), len(b["middle"])]
    try:  # a context of SD 1.5's width, as a ControlNet for another model meets ToonCrafter's
        adapted.get_control(x, sigma, {{"c_crossattn": torch.randn(1, 77, 768)}}, 1, {{}})
        out["other_width"] = "accepted"
    except Exception as e:
        out["other_width"] = f"{{type(e).__name__}}: {{e}}"
    print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def results() -> dict:
    return run_in_comfy(SCRIPT, timeout=1800)


def test_stock_loader_loads_the_released_width_sketch_encoder_as_a_controlnet(results):
    assert results["stock_class"] == "ControlNet", results


def test_stock_controlnet_apply_steers_every_frame_and_strength_0_is_the_base(results):
    assert results["finite"] and results["changed"] > 1e-3, results
    assert results["strength0_equal"], results


def test_stock_controlnet_gives_sketch_guidances_residuals(results):
    assert results["residual_counts"][0] == results["residual_counts"][1] and results["residual_counts"][2:] == [1, 1]
    assert results["residual_rel"] < 1e-4, results


def test_a_controlnet_for_another_model_is_refused_in_one_line(results):
    message = results["other_width"]
    assert message.startswith("InputError") and "SD 2.x ControlNets" in message and "\n" not in message, message


def test_stock_loader_refuses_a_tiny_encoder_in_its_own_load(results):
    """ComfyUI detects a ControlNet's architecture from SD-sized shapes; a 32-channel encoder fails there.
    Load ToonCrafter Sketch Encoder is the loader for it (docs/native-model.md)."""
    assert results["tiny_stock_load"] != "loaded", results
