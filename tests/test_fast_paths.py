"""The speed paths of the core against the plain fp32 computation they replace: convolutions as
matmuls, keys projected once per clip, batched encoders, GroupNorm in half precision,
channels-last weights and torch.compile (tiny fixture and full-size random weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import full_size_unet_uninitialised, tiny_checkpoint
from helpers import relative_error as rel
from torch import nn

from tooncrafter_core.conditioning import contexts, encode_prompts, image_context, join_context, negative_image_context
from tooncrafter_core.models import ops
from tooncrafter_core.models.attention import CrossAttention
from tooncrafter_core.models.unet import UNetModel
from tooncrafter_core.models.unet_call import FrameContext
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.runtime import prepare
from tooncrafter_core.settings import RuntimeOptions, SamplingConfig
from tooncrafter_core.weights.checkpoint import load_model


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _keyframes(h=64, w=64):
    g = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, h, w, generator=g) * 2 - 1, torch.rand(1, 3, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize(
    "shape,kernel,padding",
    [((32, 48, 1, 1), 3, 1), ((32, 48, 2, 2), 3, 1), ((8, 48, 4, 4), 3, 1), ((32, 48, 2, 2), 1, 0)],
)
def test_small_conv2d_runs_as_a_matmul_with_the_same_result(shape, kernel, padding):
    conv = ops.Conv2d(48, 40, kernel, padding=padding)
    x = torch.randn(shape)
    assert ops._conv_as_matmul(conv, x)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), conv._conv_forward(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)


def test_temporal_conv3d_runs_as_a_matmul_with_the_same_result():
    conv = ops.Conv3d(48, 40, (3, 1, 1), padding=(1, 0, 0))
    x = torch.randn(2, 48, 16, 2, 2)
    assert ops._conv_as_matmul(conv, x)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), conv._conv_forward(x, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)


def test_large_or_strided_convs_keep_the_convolution_kernel():
    assert not ops._conv_as_matmul(ops.Conv2d(8, 8, 3, padding=1), torch.randn(4, 8, 16, 16))
    assert not ops._conv_as_matmul(ops.Conv2d(8, 8, 3, stride=2, padding=1), torch.randn(1, 8, 4, 4))
    assert not ops._conv_as_matmul(ops.Conv3d(8, 8, (3, 3, 3), padding=1), torch.randn(1, 8, 2, 2, 2))
    assert not ops._conv_as_matmul(ops.Conv2d(8, 8, 3, padding=0), torch.randn(1, 8, 4, 4))


def test_keys_projected_once_per_clip_equal_keys_repeated_per_frame():
    torch.manual_seed(0)
    attn = CrossAttention(64, 32, heads=4, dim_head=16, image_cross_attention=True, text_tokens=5).eval()
    b, t = 2, 3
    x = torch.randn(b * t, 10, 64)
    text = torch.randn(b, 5, 32)
    image = torch.randn(b * t, 4, 32)
    with torch.no_grad():
        shared = attn(x, FrameContext(text, image, t))
        repeated = attn(x, FrameContext(text.repeat_interleave(t, dim=0), image, t))
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-6)


def test_batched_encoders_equal_separate_calls(tiny_path):
    model = load_model(tiny_path, dtype=torch.float32)
    start, _ = _keyframes()
    start = torch.cat([start, -start])
    prompts = ["a cat waves", "a dog jumps"]
    with torch.inference_mode():
        pos, neg = contexts(model, start, prompts, True, "cpu", torch.float32)
        text = encode_prompts(model.cond_stage_model, prompts, "cpu", torch.float32)
        text_u = encode_prompts(model.cond_stage_model, ["", ""], "cpu", torch.float32)
        _, img = image_context(model.embedder, model.image_proj_model, start)
        _, img_u = negative_image_context(model.embedder.model.visual, model.image_proj_model, model.config.vision, "cpu",
                                          torch.float32)
        img_u = img_u.expand(2, -1, -1)
    assert rel(pos, join_context(text, img)) < 1e-5
    assert rel(neg, join_context(text_u, img_u)) < 1e-5


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 1e-2), (torch.float16, 1e-3)])
def test_group_norm_in_half_precision_is_as_accurate_as_an_fp32_copy(dtype, bound):
    norm = nn.GroupNorm(8, 32, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(4, 32, 16, 16) * 5 + 3
    half = norm.to(dtype)
    xh = x.to(dtype)
    w, b = half.weight.float(), half.bias.float()
    exact = F.group_norm(xh.float(), 8, w, b, 1e-6)  # the same inputs, no output rounding
    fp32_copy = exact.to(dtype)  # what normalising an fp32 copy and rounding gives
    native = ops.group_norm(half, xh)
    assert native.dtype == dtype
    # Only the output rounding: no worse than normalising an fp32 copy and rounding.
    assert rel(native, exact) <= rel(fp32_copy, exact) * 1.05 + 1e-7
    assert rel(native, exact) < bound


def test_channels_last_gives_the_plain_fp32_result(tiny_path):
    start, end = _keyframes()
    sampling = SamplingConfig(steps=2)
    plain = interpolate(load_model(tiny_path, dtype=torch.float32), start, end, "a cat", sampling,
                        frames=4, generator=torch.Generator().manual_seed(1))
    model = load_model(tiny_path, dtype=torch.float32)
    fast = interpolate(model, start, end, "a cat", sampling, RuntimeOptions(channels_last=True),
                       frames=4, generator=torch.Generator().manual_seed(1))
    conv = model.unet.input_blocks[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert rel(fast, plain) < 1e-5


def test_prepare_refuses_to_change_options_of_a_prepared_model(tiny_path):
    model = load_model(tiny_path, dtype=torch.float32)
    prepare(model, RuntimeOptions(channels_last=True))
    prepare(model, RuntimeOptions(channels_last=True))  # the same options again: nothing to do
    with pytest.raises(ValueError, match="load it again"):
        prepare(model, RuntimeOptions(compile=True))


def test_compiled_model_traces_whole_and_never_recompiles_between_steps(tiny_path):
    """Dynamo with the eager backend (what inductor would compile, without the C++ build time):
    the UNet is one graph for every step, the decoder one per clip length, and a second run with
    another seed compiles nothing."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    start, end = _keyframes()
    sampling = SamplingConfig(steps=3)
    plain = interpolate(load_model(tiny_path, dtype=torch.float32), start, end, "a cat", sampling,
                        frames=4, generator=torch.Generator().manual_seed(1))
    model = load_model(tiny_path, dtype=torch.float32)
    options = RuntimeOptions(compile=True, compile_backend="eager")
    compiled = interpolate(model, start, end, "a cat", sampling, options, frames=4, generator=torch.Generator().manual_seed(1))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 3, dict(counters["stats"])  # UNet; decoder at 4 frames and at 2 (second decode)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert rel(compiled, plain) < 1e-5
    interpolate(model, start, end, "a dog", sampling, options, frames=4, generator=torch.Generator().manual_seed(2))
    assert counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------
# Full-size UNet with random weights (1.44 B parameters), one call at a small latent


@pytest.fixture(scope="module")
def full_unet():
    unet = full_size_unet_uninitialised()
    cfg = unet.config
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in unet.modules():
            for name, p in m.named_parameters(recurse=False):
                if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                    p.fill_(1.0 if name == "weight" else 0.0)
                else:
                    p.normal_(0.0, 0.02, generator=g)
    unet.requires_grad_(False).eval()
    g = torch.Generator().manual_seed(1)
    b, t = 2, 4
    x = torch.randn(b, cfg.in_channels, t, 8, 8, generator=g)
    ctx = torch.randn(b, cfg.text_tokens + 16 * cfg.image_tokens_per_frame, cfg.context_dim, generator=g)
    args = (x, torch.tensor([999, 499]), ctx, torch.tensor([10, 10]))
    with torch.inference_mode():
        ref = unet(*args)
    return unet, args, ref


def test_full_size_unet_small_conv_path_equals_the_convolution_kernels(full_unet, monkeypatch):
    unet, args, ref = full_unet
    monkeypatch.setattr(ops, "SMALL_CONV_POSITIONS", 0)  # every conv through oneDNN
    with torch.inference_mode():
        plain = unet(*args)
    assert rel(ref, plain) < 1e-5


def test_full_size_unet_bf16_stays_close_to_fp32(full_unet):
    unet, args, ref = full_unet
    with torch.device("meta"):
        half = UNetModel(unet.config, dtype=torch.bfloat16)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in unet.state_dict().items()}, assign=True)
    with torch.inference_mode():
        out = half.eval()(*(a.to(torch.bfloat16) if a.is_floating_point() else a for a in args))
    assert torch.isfinite(out).all()
    assert rel(out, ref) < 0.05
