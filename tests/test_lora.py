"""LoRA in the core: PEFT, kohya and ComfyUI-style files on the tiny fixture's UNet, merged as
`W + s·(alpha/r)·B·A`, several at once, restored exactly; keys for another model are refused.
(The ComfyUI node is in test_comfy_lora.py.)"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import (
    attn2_modules,
    gradient_keyframes,
    random_lora,
    relative_error,
    save_kohya_lora,
    save_peft_lora,
    tiny_checkpoint,
)
from safetensors.torch import save_file

from tooncrafter_core.models.tooncrafter import ToonCrafter
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.weights.checkpoint import UNET_PREFIX, load_model, load_state_into, read_state_dict
from tooncrafter_core.weights.lora import (
    LoraError,
    LoraSpec,
    adaptable_shapes,
    load_lora,
    merge,
    merge_specs,
    parse_spec,
    restore,
)

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def unet_state(ckpt):
    state = read_state_dict(ckpt)
    return {k[len(UNET_PREFIX) :]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}


@pytest.fixture(scope="module")
def factors(unet_state):
    return random_lora(unet_state, rank=RANK)



def _video(model: ToonCrafter) -> torch.Tensor:
    start, end = gradient_keyframes()
    return interpolate(model, start, end, "a ball", SamplingConfig(steps=2), generator=torch.Generator().manual_seed(7))


def _fp32(ckpt: Path) -> ToonCrafter:
    return load_model(ckpt, dtype=torch.float32)


def _merged_by_hand(ckpt: Path, factors, strength: float) -> ToonCrafter:
    """The model with W + s·(alpha/r)·B·A written into its state dict by the test itself."""
    state = {k: v.float() for k, v in read_state_dict(ckpt).items()}
    for module, (a, b) in factors.items():
        state[UNET_PREFIX + module + ".weight"] += strength * (ALPHA / RANK) * (b @ a)
    model = load_model(ckpt, dtype=torch.float32)  # same config; weights replaced below
    load_state_into(model, state, "merged by hand")
    return model


def test_peft_lora_changes_the_output_exactly_as_merging_by_hand(ckpt, factors, tmp_path):
    adapter = save_peft_lora(tmp_path / "peft", factors, ALPHA).parent
    base = _video(_fp32(ckpt))
    for strength in (0.15, 1.0):
        model = _fp32(ckpt)
        merge_specs(model, [LoraSpec(adapter, strength)])
        ours = _video(model)
        expected = _video(_merged_by_hand(ckpt, factors, strength))
        assert relative_error(ours, expected) < 1e-5
        # The LoRA really acts: otherwise the comparison above proves nothing.
        assert relative_error(ours, base) > 1e-3


def test_strength_zero_gives_the_base_output_bit_for_bit(ckpt, factors, tmp_path):
    adapter = save_peft_lora(tmp_path / "peft", factors, ALPHA)
    model = _fp32(ckpt)
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    merge_specs(model, [LoraSpec(adapter, 0.0)])
    assert all(torch.equal(v, weights[k]) for k, v in model.unet.state_dict().items())
    assert torch.equal(_video(model), _video(_fp32(ckpt)))


def test_kohya_file_of_the_same_weights_gives_the_same_result(ckpt, factors, tmp_path):
    peft = _fp32(ckpt)
    merge_specs(peft, [LoraSpec(save_peft_lora(tmp_path / "peft", factors, ALPHA), 0.5)])
    kohya = _fp32(ckpt)
    merge_specs(kohya, [LoraSpec(save_kohya_lora(tmp_path / "kohya.safetensors", factors, ALPHA), 0.5)])
    for (k, a), (_, b) in zip(peft.unet.state_dict().items(), kohya.unet.state_dict().items()):
        assert torch.equal(a, b), k
    assert torch.equal(_video(peft), _video(kohya))


def test_comfyui_style_keys_map_onto_the_same_layers(unet_state, factors, tmp_path):
    targets = adaptable_shapes(unet_state)
    tensors = {}
    for i, (module, (a, b)) in enumerate(factors.items()):
        # Both prefixes ComfyUI writes and both pairs of names, mixed within one file.
        prefix = "diffusion_model." if i % 2 else "model.diffusion_model."
        down, up = ("lora_down.weight", "lora_up.weight") if i % 3 else ("lora_A.weight", "lora_B.weight")
        tensors[f"{prefix}{module}.{down}"] = a
        tensors[f"{prefix}{module}.{up}"] = b
        tensors[f"{prefix}{module}.alpha"] = torch.tensor(ALPHA)
    save_file(tensors, str(tmp_path / "comfy.safetensors"))
    lora = load_lora(tmp_path / "comfy.safetensors", targets)
    assert sorted(lora.layers) == sorted(m + ".weight" for m in factors)
    module = attn2_modules(unet_state)[0]
    a, b = factors[module]
    layer = lora.layers[module + ".weight"]
    assert layer.scale == ALPHA / RANK
    torch.testing.assert_close(layer.delta(targets[module + ".weight"]), (ALPHA / RANK) * (b @ a))


def test_several_loras_add_up_and_restore_puts_back_every_bit(ckpt, unet_state, factors, tmp_path):
    other = random_lora(unet_state, rank=2, seed=1)
    first = save_peft_lora(tmp_path / "a", factors, ALPHA)
    second = save_kohya_lora(tmp_path / "b.safetensors", other, 2.0)
    model = load_model(ckpt)  # fp16, as in the file: the merge rounds once per weight
    original = {k: v.clone() for k, v in model.unet.state_dict().items()}
    backup = merge_specs(model, [LoraSpec(first, 0.3), LoraSpec(second, -0.7)], keep_original=True)
    module = attn2_modules(unet_state)[3]
    (a1, b1), (a2, b2) = factors[module], other[module]
    key = module + ".weight"
    expected = original[key].float() + 0.3 * (ALPHA / RANK) * (b1 @ a1) - 0.7 * (2.0 / 2) * (b2 @ a2)
    assert torch.equal(model.unet.state_dict()[key], expected.to(torch.float16))
    assert set(backup) == {m + ".weight" for m in factors}
    restore(model.unet, backup)
    assert all(torch.equal(v, original[k]) for k, v in model.unet.state_dict().items())


def test_peft_rank_and_alpha_patterns_and_rslora(unet_state, factors, tmp_path):
    targets = adaptable_shapes(unet_state)
    to_q = next(m for m in factors if m.endswith("attn2.to_q"))
    to_k = next(m for m in factors if m.endswith("attn2.to_k"))
    path = save_peft_lora(tmp_path / "p", factors, ALPHA, alpha_pattern={"attn2.to_q": 2.0})
    lora = load_lora(path, targets)
    assert lora.layers[to_q + ".weight"].scale == 2.0 / RANK
    assert lora.layers[to_k + ".weight"].scale == ALPHA / RANK
    path = save_peft_lora(tmp_path / "r", factors, ALPHA, use_rslora=True)
    assert load_lora(path, targets).layers[to_k + ".weight"].scale == ALPHA / math.sqrt(RANK)


def test_a_lora_for_another_model_fails_with_its_keys(unet_state, tmp_path):
    tensors = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_q.lora_up.weight": torch.zeros(320, 4),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 768),
    }
    save_file(tensors, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(LoraError) as e:
        load_lora(tmp_path / "sd15.safetensors", adaptable_shapes(unet_state))
    message = str(e.value)
    assert "3 of its 3 keys match no layer" in message
    assert all(k in message for k in tensors)
    assert "another model" in message


def test_a_lora_for_a_wider_unet_names_the_layers(unet_state, factors, tmp_path):
    module = next(iter(factors))
    a, b = factors[module]
    wide = {module: (torch.zeros(RANK, a.shape[1] * 2), b)}
    with pytest.raises(LoraError, match=rf"{module}: the weight is .* B and A are"):
        load_lora(save_peft_lora(tmp_path / "w", wide, ALPHA), adaptable_shapes(unet_state))


def test_half_a_pair_and_a_peft_file_without_its_config_are_named(unet_state, factors, tmp_path):
    targets = adaptable_shapes(unet_state)
    module = next(iter(factors))
    save_file({f"diffusion_model.{module}.lora_up.weight": factors[module][1]}, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoraError, match=rf"{module} has no A/down matrix"):
        load_lora(tmp_path / "half.safetensors", targets)
    path = save_peft_lora(tmp_path / "nocfg", factors, ALPHA)
    (path.parent / "adapter_config.json").unlink()
    with pytest.raises(LoraError, match="adapter_config.json is not beside adapter_model.safetensors"):
        load_lora(path, targets)
    (tmp_path / "loha.safetensors").write_bytes(b"")
    save_file({f"lora_unet_{module.replace('.', '_')}.hada_w1_a": torch.zeros(2, 2)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(LoraError, match="LoHa"):
        load_lora(tmp_path / "loha.safetensors", targets)
    with pytest.raises(LoraError, match="not found"):
        load_lora(tmp_path / "missing.safetensors", targets)


@pytest.mark.parametrize(
    "text, path, strength",
    [
        ("style.safetensors", "style.safetensors", 1.0),
        ("style.safetensors:0.15", "style.safetensors", 0.15),
        ("dir/adapter:-1", "dir/adapter", -1.0),
        ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", 1.0),
        ("C:\\loras\\a.safetensors:0.5", "C:\\loras\\a.safetensors", 0.5),
    ],
)
def test_cli_spec_parsing(text, path, strength):
    assert parse_spec(text) == LoraSpec(Path(path), strength)


def test_cli_lora_option_merges_before_sampling(ckpt, factors, tmp_path):
    from PIL import Image

    from tooncrafter_core.__main__ import main

    for name, color in (("a.png", (250, 40, 40)), ("b.png", (40, 40, 250))):
        Image.new("RGB", (64, 64), color).save(tmp_path / name)
    adapter = save_peft_lora(tmp_path / "peft", factors, ALPHA).parent
    common = ["interpolate", "--ckpt", str(ckpt), "--start", str(tmp_path / "a.png"), "--end", str(tmp_path / "b.png"),
              "--steps", "2", "--device", "cpu", "--height", "64", "--width", "64"]
    outs = {}
    for label, extra in (("base", []), ("zero", ["--lora", f"{adapter}:0"]), ("one", ["--lora", str(adapter)])):
        assert main([*common, "--out", str(tmp_path / label), *extra]) == 0
        outs[label] = (tmp_path / label / "frame_001.png").read_bytes()
    assert outs["zero"] == outs["base"]
    assert outs["one"] != outs["base"]
    assert main([*common, "--out", str(tmp_path / "bad"), "--lora", str(tmp_path / "nothing.safetensors")]) == 2


def test_merge_without_keep_original_returns_nothing_to_restore(ckpt, unet_state, factors, tmp_path):
    model = _fp32(ckpt)
    lora = load_lora(save_peft_lora(tmp_path / "p", factors, ALPHA), adaptable_shapes(unet_state))
    assert merge(model.unet, [(lora, 1.0)]) == {}
