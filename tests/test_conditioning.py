"""CLIP preprocessing against kornia (test-only dependency; the core never imports it)."""

import kornia  # noqa: E402
import pytest
import torch

from tooncrafter_core.models.encoders import resize_antialiased  # noqa: E402


@pytest.mark.parametrize("size", [(320, 512), (64, 64), (32, 64), (224, 224), (500, 300)])
def test_resize_matches_kornia_antialiased_bicubic(size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = resize_antialiased(x, (224, 224))
    theirs = kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_our_openclip_towers_match_open_clip(tmp_path, quick_gelu):
    """Our text/vision towers against open_clip's own modules, same random weights."""
    import json

    import open_clip
    from helpers import TINY

    from tooncrafter_core.models.config import _openclip_arch
    from tooncrafter_core.models.encoders import TextTower, VisionTower

    arch = json.loads((TINY / "TC-Tiny.json").read_text())
    arch["quick_gelu"] = quick_gelu
    arch["text_cfg"]["mlp_ratio"] = 2.0
    name = f"TC-Test-{int(quick_gelu)}"
    (tmp_path / f"{name}.json").write_text(json.dumps(arch))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    torch.manual_seed(0)
    ref = open_clip.create_model(name, pretrained=None).eval()
    text_cfg, vision_cfg = _openclip_arch(name, tmp_path)
    text = TextTower(text_cfg)
    loaded = text.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("visual.")}, strict=False)
    assert loaded.missing_keys == [] and set(loaded.unexpected_keys) <= {"attn_mask"}
    vision = VisionTower(vision_cfg)
    vision.load_state_dict({k[len("visual."):]: v for k, v in ref.state_dict().items() if k.startswith("visual.")})

    tokens = open_clip.tokenize(["a cartoon cat waves", ""])
    with torch.no_grad():
        x = ref.token_embedding(tokens) + ref.positional_embedding
        batch_first = getattr(ref.transformer, "batch_first", False)
        x = x if batch_first else x.permute(1, 0, 2)
        for block in ref.transformer.resblocks[:-1]:  # penultimate layer, as ToonCrafter
            x = block(x, attn_mask=ref.attn_mask)
        expected = ref.ln_final(x if batch_first else x.permute(1, 0, 2))
        torch.testing.assert_close(text(tokens, torch.float32), expected, rtol=1e-4, atol=1e-5)

        pixels = torch.randn(2, 3, 224, 224)
        v = ref.visual
        y = v.conv1(pixels).flatten(2).transpose(1, 2)
        y = torch.cat([v.class_embedding.expand(2, 1, -1), y], dim=1) + v.positional_embedding
        y = v.ln_pre(y)
        y = v.transformer(y if getattr(v.transformer, "batch_first", False) else y.permute(1, 0, 2))
        y = y if getattr(v.transformer, "batch_first", False) else y.permute(1, 0, 2)
        torch.testing.assert_close(vision(pixels), y, rtol=1e-4, atol=1e-5)


def test_the_negative_context_goes_through_the_encoders_once_per_model(tmp_path):
    """The empty prompt and the all-zero image are constants of the weights: the first clip encodes them
    (alone, so that a positive's bits do not depend on whether it came first), later clips (sequences,
    batches) encode only their positives."""
    from helpers import gradient_keyframes, relative_error, tiny_checkpoint

    from tooncrafter_core import conditioning
    from tooncrafter_core.weights.checkpoint import load_model

    model = load_model(tiny_checkpoint(tmp_path), dtype=torch.float32)
    visual, batches = model.embedder.model.visual, []
    forward = visual.forward
    visual.forward = lambda x: batches.append(x.shape[0]) or forward(x)
    start, _ = gradient_keyframes()
    with torch.inference_mode():
        first = conditioning.contexts(model, start, ["a"], True, "cpu", torch.float32)
        second = conditioning.contexts(model, torch.cat([start, start.flip(-1)]), ["a", "b"], True, "cpu", torch.float32)
        fresh = load_model(tiny_checkpoint(tmp_path / "again"), dtype=torch.float32)
        text = conditioning.encode_prompts(fresh.cond_stage_model, [""], "cpu", torch.float32)
        _, image = conditioning.negative_image_context(fresh.embedder.model.visual, fresh.image_proj_model,
                                                       fresh.config.vision, "cpu", torch.float32)
        again = conditioning.contexts(model, start, ["a"], True, "cpu", torch.float32)
    assert batches == [1, 1, 2, 1]  # the zero image, the positive, then positives alone
    assert second[1].shape[0] == 2 and torch.equal(second[1][0], first[1][0]) and torch.equal(second[1][1], first[1][0])
    assert relative_error(first[1], conditioning.join_context(text, image)) < 1e-5
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    assert relative_error(second[0][:1], first[0]) < 1e-5
