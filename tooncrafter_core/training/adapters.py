"""LoRA layers for training, through the `peft` library (the train extra), and their files: PEFT's
format (`adapter_model.safetensors` + `adapter_config.json`, read by `--lora`, Load ToonCrafter LoRA
and `weights.lora`) and a kohya-keyed copy for ComfyUI's own LoRA loaders and other tools."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .. import files
from ..models.attention import SpatialTransformer
from ..weights.lora import PEFT_CONFIG

# `--targets attn2`: the published ToonCrafter LoRAs adapt the spatial cross-attention projections only.
SPATIAL_CROSS_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
PRESETS = {"attn2": "the spatial transformers' cross-attention projections attn2.to_q/to_k/to_v/to_out.0"}
PEFT_WEIGHTS = "adapter_model.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"
INSTALL_HINT = 'pip install peft (or, in the pack\'s folder, pip install ".[train]")'


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("attn2",)


def target_modules(unet: nn.Module, targets: Sequence[str]) -> list[str]:
    """Names of the UNet's Linear layers to adapt: `attn2` (see PRESETS), or regular expressions matched
    against the whole module name (e.g. `.*attn1\\.to_(q|k|v)`). A pattern that matches nothing is an error."""
    linears = [name for name, module in unet.named_modules() if isinstance(module, nn.Linear)]
    chosen: list[str] = []
    for target in targets:
        if target == "attn2":
            spatial = [name for name, module in unet.named_modules() if isinstance(module, SpatialTransformer)]
            found = [
                f"{block}.transformer_blocks.{i}.attn2.{proj}"
                for block in spatial
                for i in range(len(unet.get_submodule(block).transformer_blocks))
                for proj in SPATIAL_CROSS_ATTENTION
            ]
        else:
            try:
                pattern = re.compile(target)
            except re.error as e:
                raise ValueError(f"--targets {target!r} is not a regular expression ({e})") from None
            found = [name for name in linears if pattern.fullmatch(name)]
        if not found:
            raise ValueError(
                f"--targets {target!r} matches no Linear layer of the UNet; use attn2 ({PRESETS['attn2']}) or a "
                f"pattern of full module names such as {linears[0]!r}"
            )
        chosen += [name for name in found if name not in chosen]
    return chosen


def check_installed() -> None:
    """Fails at once, naming the install command, when peft is missing (before any model loads)."""
    _peft()


def _peft():
    try:
        import peft
    except ImportError:
        raise ValueError(f"training LoRAs needs the peft library: {INSTALL_HINT}") from None
    return peft


def add_lora(unet: nn.Module, settings: LoraSettings, seed: int = 0) -> list[str]:
    """Wrap the target layers of `unet` (in place) with trainable fp32 LoRA layers; the base weights are
    frozen. A starts as peft initialises it (Kaiming uniform), here from `seed`, B at zero, so the
    adapter starts as no change. Returns the adapted module names."""
    peft = _peft()
    modules = target_modules(unet, settings.targets)
    config = peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=modules)
    unet.requires_grad_(False)
    peft.inject_adapter_in_model(config, unet)
    generator = torch.Generator().manual_seed(seed)
    for name, param in unet.named_parameters():
        if ".lora_" in name:
            # fp32 master weights whatever the base model computes in; peft casts activations to them.
            param.data = param.data.float()
            if ".lora_A." in name:
                cpu = torch.empty(param.shape)
                nn.init.kaiming_uniform_(cpu, a=5**0.5, generator=generator)
                param.data = cpu.to(param.device)
            param.requires_grad_(True)
    return modules


def lora_parameters(unet: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in unet.named_parameters() if ".lora_" in name}


def lora_state(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters as (module, A (r in), B (out r)) factors keyed `<module>.lora_A.weight` / `.lora_B.weight`."""
    return {_plain(name): p.detach().float().cpu().contiguous() for name, p in lora_parameters(unet).items()}


def _plain(name: str) -> str:
    """peft's `<module>.lora_A.default.weight` -> `<module>.lora_A.weight`."""
    return name.replace(".default.", ".")


def load_lora_state(unet: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = lora_parameters(unet)
    by_plain = {_plain(name): p for name, p in params.items()}
    missing = sorted(set(by_plain) - set(state))
    if missing or set(state) - set(by_plain):
        raise ValueError(f"the saved adapter does not fit these LoRA layers (missing {missing[:4]}...)")
    with torch.no_grad():
        for name, p in by_plain.items():
            p.copy_(state[name])


def save_adapter(folder: Path, unet: nn.Module, settings: LoraSettings, modules: Sequence[str]) -> Path:
    """PEFT files (and the kohya copy) of the current adapter in `folder`; returns the PEFT weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    state = lora_state(unet)
    # Each file renamed into place when complete: a LoRA loader never sees a truncated one.
    with files.atomic_path(folder / PEFT_WEIGHTS) as partial:
        save_file({f"base_model.model.{k}": v for k, v in state.items()}, str(partial))
    config = {
        "peft_type": "LORA",
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": list(modules),
        "bias": "none",
        "use_rslora": False,
    }
    files.write_text(folder / PEFT_CONFIG, json.dumps(config, indent=1))
    kohya = {}
    for module in modules:
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_down.weight"] = state[f"{module}.lora_A.weight"]
        kohya[f"{name}.lora_up.weight"] = state[f"{module}.lora_B.weight"]
        kohya[f"{name}.alpha"] = torch.tensor(float(settings.alpha))
    with files.atomic_path(folder / KOHYA_WEIGHTS) as partial:
        save_file(kohya, str(partial))
    return folder / PEFT_WEIGHTS


def read_adapter(folder: Path) -> dict[str, torch.Tensor]:
    """The factors `save_adapter` wrote (for resuming)."""
    state = load_file(str(folder / PEFT_WEIGHTS))
    return {k.removeprefix("base_model.model."): v for k, v in state.items()}
