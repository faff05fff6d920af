"""The UNet's patch points (`models.unet_call`): what each hook receives (shapes and ComfyUI's block
keys), that hooks which change nothing change nothing, and that each one reaches the computation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import relative_error as rel
from helpers import tiny_checkpoint

from tooncrafter_core.models.attention import SpatialTransformer, attention, split_attention
from tooncrafter_core.models.unet_call import AttentionHooks, ControlResiduals, UNetHooks
from tooncrafter_core.weights.checkpoint import load_model

B, T, H, W = 1, 4, 8, 8


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    return load_model(tiny_checkpoint(tmp_path_factory.mktemp("ckpt")), dtype=torch.float32).unet.eval()


@pytest.fixture(scope="module")
def inputs(unet):
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    x = torch.randn(B, cfg.in_channels, T, H, W, generator=g)
    context = torch.randn(B, cfg.text_tokens + T * cfg.image_tokens_per_frame, cfg.context_dim, generator=g)
    return x, torch.tensor([500]), context, torch.tensor([10])


def _run(unet, inputs, hooks=UNetHooks(), control=None):
    with torch.no_grad():
        return unet(*inputs, control=control, hooks=hooks)


def _spatial_blocks(unet) -> list[tuple[str, int]]:
    """ComfyUI's block key of every block holding a spatial transformer, in forward order."""
    keys = []
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, block in enumerate(blocks):
            if any(isinstance(m, SpatialTransformer) for m in block):
                keys.append((name, i))
    return keys


def test_identity_hooks_leave_the_output_as_it_was(unet, inputs):
    seen = []

    def same_input(n, context, value, site):
        seen.append(site.which)
        return n, context, value

    identity = AttentionHooks(inputs=(same_input,), outputs=(lambda out, site: out,))
    hooks = UNetHooks(
        attn1=identity, attn2=identity, middle=(lambda x, site: x,),
        input_block=(lambda h, key: h,), input_block_after_skip=(lambda h, key: h,),
        output_block=(lambda h, skip, key: (h, skip),),
    )
    plain = _run(unet, inputs)
    patched = _run(unet, inputs, hooks)
    # Patched cross-attention uses keys repeated per frame: the same math, another summation order.
    assert rel(patched, plain) < 1e-5
    spatial = len(_spatial_blocks(unet)) * unet.config.transformer_depth
    assert seen.count("attn1") == spatial and seen.count("attn2") == spatial


def test_attention_patches_see_comfyuis_shapes_and_block_keys(unet, inputs):
    cfg = unet.config
    calls = []

    def record(n, context, value, site):
        calls.append((site.which, site.key, site.transformer_index, tuple(n.shape), tuple(context.shape), site.activations))
        return n, context, value

    _run(unet, inputs, UNetHooks(attn1=AttentionHooks(inputs=(record,)), attn2=AttentionHooks(inputs=(record,))))
    attn1 = [c for c in calls if c[0] == "attn1"]
    assert [c[1][:2] for c in attn1] == _spatial_blocks(unet)
    assert [c[2] for c in attn1] == list(range(len(attn1)))
    for which, key, _, n, context, activations in calls:
        frames, channels, h, w = activations
        assert frames == B * T and n == (B * T, h * w, channels)
        if which == "attn1":
            assert context == n
        else:  # the clip's text tokens then the frame's 16 image tokens
            assert context == (B * T, cfg.text_tokens + cfg.image_tokens_per_frame, cfg.context_dim)


def test_attn2_replacement_gets_text_keys_then_image_keys(unet, inputs):
    cfg = unet.config
    keys = []

    def plain_attention(q, k, v, site):
        keys.append(tuple(k.shape))
        return attention(q, k, v, site.heads)

    plain = _run(unet, inputs)
    replaced = _run(unet, inputs, UNetHooks(attn2=AttentionHooks(replacements={("middle", 0): plain_attention})))
    assert rel(replaced, plain) < 1e-5
    inner = keys[0][-1]
    assert keys == [(B * T, cfg.text_tokens, inner), (B * T, cfg.image_tokens_per_frame, inner)]


def test_a_replacement_reaches_only_its_layer(unet, inputs):
    """PAG's perturbation (self-attention -> its values) on the middle block's layer."""
    calls = []

    def values(q, k, v, site):
        calls.append(site.key)
        return v

    plain = _run(unet, inputs)
    perturbed = _run(unet, inputs, UNetHooks(attn1=AttentionHooks(replacements={("middle", 0, 0): values})))
    assert calls == [("middle", 0, 0)]
    assert rel(perturbed, plain) > 1e-3
    # The same perturbation by hand: the layer's self-attention made to return its values.
    attn1 = unet.middle_block[1].transformer_blocks[0].attn1
    original = attn1.forward
    attn1.forward = lambda x, context=None: attn1.to_out(attn1.to_v(x))
    try:
        by_hand = _run(unet, inputs)
    finally:
        attn1.forward = original
    assert rel(perturbed, by_hand) < 1e-5


def test_block_patches_run_in_comfyuis_order_and_change_the_output(unet, inputs):
    order = []

    def scale_input(h, key):
        order.append(("in", key, tuple(h.shape)))
        return h * 1.5 if key == ("input", 1) else h

    def output(h, skip, key):
        order.append(("out", key, tuple(h.shape), tuple(skip.shape)))
        return h, skip

    plain = _run(unet, inputs)
    patched = _run(unet, inputs, UNetHooks(input_block=(scale_input,), output_block=(output,)))
    assert rel(patched, plain) > 1e-3
    n_in, n_out = len(unet.input_blocks), len(unet.output_blocks)
    assert [o[1] for o in order] == [("input", i) for i in range(n_in)] + [("output", i) for i in range(n_out)]
    assert all(o[2][0] == B * T and len(o[2]) == 4 for o in order)


def test_control_residuals_as_a_list_or_typed_are_the_same(unet, inputs):
    g = torch.Generator().manual_seed(1)
    shapes = []
    _run(unet, inputs, UNetHooks(input_block=(lambda h, key: shapes.append(h.shape) or h,)))
    residuals = [torch.randn(s, generator=g) for s in shapes] + [torch.randn(shapes[-1], generator=g)]
    as_list = _run(unet, inputs, control=residuals)
    typed = _run(unet, inputs, control=ControlResiduals.from_list(residuals))
    assert torch.equal(as_list, typed)
    assert rel(as_list, _run(unet, inputs)) > 1e-3
    with pytest.raises(ValueError, match="control residuals"):
        _run(unet, inputs, control=residuals[:-2])


def test_split_attention_splits_whole_keys_over_a_tiled_query_batch():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 6, 8, generator=g)  # 1 image in 4 tiles of 6 tokens
    k, v = torch.randn(1, 24, 8, generator=g), torch.randn(1, 24, 8, generator=g)
    out = split_attention(q, k, v, heads=2)
    expected = attention(q, k.reshape(4, 6, 8), v.reshape(4, 6, 8), heads=2)
    torch.testing.assert_close(out, expected)


def test_attention_site_key_falls_back_to_the_block():
    from tooncrafter_core.models.unet_call import AttentionSite

    site = AttentionSite(("input", 4), 0, 2, "attn1", 8, 40, (16, 320, 8, 8))
    block_wide = AttentionHooks(replacements={("input", 4): "block"})
    exact = AttentionHooks(replacements={("input", 4): "block", ("input", 4, 0): "layer"})
    assert block_wide.replacement(site) == "block"
    assert exact.replacement(site) == "layer"
    assert exact.replacement(replace(site, block=("input", 5))) is None
