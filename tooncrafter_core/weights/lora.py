"""LoRA adapters for the UNet: read PEFT, kohya and ComfyUI-style files, map them onto the UNet's
state-dict keys, and merge `W + s·(alpha/r)·B·A` into its weights (and put the originals back).

Layouts read (key of one adapted layer, `<m>` its module path such as
`input_blocks.1.1.transformer_blocks.0.attn2.to_q`):
- PEFT `save_pretrained`: `base_model.model.<m>.lora_A.weight` / `lora_B.weight` in
  `adapter_model.safetensors` (or `.bin`), with `r`, `lora_alpha` (and `rank_pattern`,
  `alpha_pattern`, `use_rslora`) in the `adapter_config.json` beside it;
- kohya: `lora_unet_<m with . -> _>.lora_down.weight` / `lora_up.weight` / `alpha`;
- ComfyUI-style: `diffusion_model.<m>` or `model.diffusion_model.<m>` with either pair of names.

A key that maps onto nothing in the UNet is an error listing it: a LoRA made for another model
(or for the text encoder) must not silently do nothing.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from .checkpoint import CheckpointError, read_state_dict
from .safetensors_file import SafetensorsError

log = logging.getLogger(__name__)

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

# Module-path prefixes the layouts put before the UNet's own names, stripped in this order.
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "unet.")
_KOHYA_PREFIX = "lora_unet_"
# (pattern, role): `down` is A (r in ...), `up` is B (out r ...). PEFT may put the adapter's name
# between `lora_A` and `weight` when a state dict is saved by hand (`lora_A.default.weight`).
_ROLES = (
    (re.compile(r"(.+)\.lora_A(?:\.[A-Za-z0-9_-]+)?\.weight$"), "down"),
    (re.compile(r"(.+)\.lora_B(?:\.[A-Za-z0-9_-]+)?\.weight$"), "up"),
    (re.compile(r"(.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"(.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"(.+)\.lora\.down\.weight$"), "down"),
    (re.compile(r"(.+)\.lora\.up\.weight$"), "up"),
    (re.compile(r"(.+)\.alpha$"), "alpha"),
)
# Adapter kinds other than plain low-rank, recognised only to name them in the error.
_OTHER_KINDS = {
    re.compile(r"\.lora_mid\."): "LoCon with a Tucker middle factor",
    re.compile(r"\.dora_scale$"): "DoRA",
    re.compile(r"\.hada_"): "LoHa",
    re.compile(r"\.lokr_"): "LoKr",
    re.compile(r"\.oft_"): "OFT",
    re.compile(r"\.(diff|diff_b|w_norm|b_norm)$"): "full weight difference",
}


class LoraError(ValueError):
    """A LoRA file that cannot be applied to this model; the message names the file and the fix."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the strength it is applied with (`path[:strength]` on the command line)."""

    path: Path
    strength: float = 1.0


def parse_spec(text: str) -> LoraSpec:
    """`PATH` or `PATH:STRENGTH` -> LoraSpec. A colon not followed by a number belongs to the path."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return LoraSpec(Path(head), float(tail))
        except ValueError:
            pass
    return LoraSpec(Path(text))


@dataclass(frozen=True)
class LoraLayer:
    """The low-rank update of one weight: `scale · up @ down`, reshaped to the weight."""

    up: torch.Tensor  # B: (out r) or (out r 1 1 ...)
    down: torch.Tensor  # A: (r in) or (r in kh kw ...)
    scale: float  # alpha / r (alpha / sqrt(r) with rsLoRA)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, shape: torch.Size, device=None) -> torch.Tensor:
        """`scale · B·A` as an fp32 tensor of `shape` on `device`."""
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return (self.scale * (up @ down)).reshape(shape)


@dataclass(frozen=True)
class Lora:
    name: str
    layers: Mapping[str, LoraLayer]  # UNet state-dict key of the adapted weight -> its update


# ---------------------------------------------------------------------------------------------
# Reading


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        for name in PEFT_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise LoraError(f"LoRA folder {path} holds neither {' nor '.join(PEFT_WEIGHTS)}; point to the adapter's folder or file")
    if not path.is_file():
        raise LoraError(f"LoRA file not found: {path}")
    return path


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)
    except (CheckpointError, SafetensorsError) as e:
        raise LoraError(f"LoRA {path.name}: {e}") from None


def _peft_config(weights: Path) -> Optional[dict]:
    path = weights.parent / PEFT_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, or not JSON
        raise LoraError(f"cannot read {path}: {e}; put back the {PEFT_CONFIG} PEFT saved with the adapter") from None
    problems = _config_problems(config)
    if problems:
        raise LoraError(f"{path} is not a usable PEFT LoRA config: {'; '.join(problems)}; "
                        f"put back the {PEFT_CONFIG} PEFT saved with the adapter")
    return config


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _config_problems(config) -> list[str]:
    """What in a PEFT config the scale is computed from cannot be used (each named)."""
    if not isinstance(config, dict):
        return [f"it holds a JSON {type(config).__name__}, not an object"]
    problems = []
    for key in ("r", "lora_alpha"):
        if key in config and not (_number(config[key]) and config[key] > 0):
            problems.append(f"{key} is {config[key]!r}, not a positive number")
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key) or {}
        if not isinstance(patterns, dict):
            problems.append(f"{key} is {patterns!r}, not an object of module patterns")
            continue
        for pattern, value in patterns.items():
            try:
                re.compile(pattern)
            except re.error:
                problems.append(f"{key} pattern {pattern!r} is not a regular expression")
            if not (_number(value) and value > 0):
                problems.append(f"{key}[{pattern!r}] is {value!r}, not a positive number")
    return problems


def _factor_problem(module: str, shape: torch.Size, up: torch.Tensor, down: torch.Tensor,
                    alpha: Optional[torch.Tensor]) -> Optional[str]:
    """Why one layer's B (up), A (down) and alpha cannot update a weight of `shape`, or None."""
    if not (up.is_floating_point() and down.is_floating_point()):
        return f"{module}: B and A are {up.dtype} and {down.dtype} tensors, not floating point"
    if (up.ndim < 2 or down.ndim < 2 or down.shape[0] == 0 or up.shape[1] != down.shape[0] or up.shape[0] != shape[0]
            or down[0].numel() != shape[1:].numel()):
        return f"{module}: the weight is {tuple(shape)}, the LoRA's B and A are {tuple(up.shape)} and {tuple(down.shape)}"
    if not (torch.isfinite(up).all() and torch.isfinite(down).all()):
        return f"{module}: B or A holds NaN or infinite values (a damaged file, or a training run that diverged)"
    if alpha is not None and not (alpha.numel() == 1 and torch.isfinite(alpha).all()):
        return f"{module}: alpha is {alpha.tolist() if alpha.numel() <= 4 else tuple(alpha.shape)}, not one finite number"
    return None


def _module_path(name: str, kohya_names: Mapping[str, str]) -> str:
    """A layout's module name -> the UNet's own module path (unchanged when nothing matches)."""
    if name.startswith(_KOHYA_PREFIX):
        return kohya_names.get(name[len(_KOHYA_PREFIX) :], name)
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _pattern_value(module: str, patterns: Mapping[str, float], default: float) -> float:
    """PEFT's per-module overrides: a pattern applies when it matches the end of the module path."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return value
    return default


def _show(keys: Sequence[str], limit: int = 12) -> str:
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def adaptable_shapes(unet_state: Mapping[str, torch.Tensor | torch.Size]) -> dict[str, torch.Size]:
    """UNet state-dict keys a LoRA may adapt (Linear and Conv weights: 2-D or more) and their shapes."""
    shapes = {k: (v.shape if isinstance(v, torch.Tensor) else torch.Size(v)) for k, v in unet_state.items()}
    return {k: s for k, s in shapes.items() if k.endswith(".weight") and len(s) >= 2}


def load_lora(path: str | Path, targets: Mapping[str, torch.Size]) -> Lora:
    """Read a LoRA (file, or PEFT folder) and map it onto `targets` (`adaptable_shapes` of the UNet).

    Raises LoraError naming every key that maps onto nothing, every layer with a missing half,
    and every update whose shape does not fit its weight.
    """
    weights = _weights_file(Path(path))
    name = weights.parent.name if weights.name in PEFT_WEIGHTS else weights.name
    tensors = _read_tensors(weights)
    if not tensors:
        raise LoraError(f"LoRA {weights} holds no tensors")
    other = sorted({kind for k in tensors for marker, kind in _OTHER_KINDS.items() if marker.search(k)})
    if other:
        raise LoraError(f"LoRA {name} is a {', '.join(other)} adapter; only plain LoRA (A/B or down/up pairs) is supported")

    modules = {k[: -len(".weight")] for k in targets}
    kohya_names = {m.replace(".", "_"): m for m in modules}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    unmatched = []
    for key, tensor in tensors.items():
        for pattern, role in _ROLES:
            m = pattern.match(key)
            if m:
                module = _module_path(m.group(1), kohya_names)
                if module in modules:
                    parts.setdefault(module, {})[role] = tensor
                    break
        else:
            unmatched.append(key)
    if unmatched:
        raise LoraError(
            f"LoRA {name}: {len(unmatched)} of its {len(tensors)} keys match no layer of the ToonCrafter UNet: "
            f"{_show(sorted(unmatched))}. Is it a LoRA for another model (SD 1.5, SVD, a text encoder)? "
            "ToonCrafter LoRAs adapt UNet layers such as input_blocks.1.1.transformer_blocks.0.attn2.to_q"
        )

    config = _peft_config(weights)
    if config is None and any(k.startswith("base_model.model.") for k in tensors):
        raise LoraError(
            f"LoRA {name} is a PEFT adapter but {PEFT_CONFIG} is not beside {weights.name}; PEFT keeps the "
            f"adapter's alpha there: put the {PEFT_CONFIG} saved with it in {weights.parent}"
        )
    if config is not None and config.get("use_dora"):
        raise LoraError(f"LoRA {name} is a DoRA adapter (use_dora in {PEFT_CONFIG}); only plain LoRA is supported")

    layers, problems = {}, []
    for module, found in sorted(parts.items()):
        missing = [half for role, half in (("down", "A/down"), ("up", "B/up")) if role not in found]
        if missing:
            problems.append(f"{module} has no {' and no '.join(missing)} matrix")
            continue
        up, down = found["up"], found["down"]
        problem = _factor_problem(module, targets[module + ".weight"], up, down, found.get("alpha"))
        if problem:
            problems.append(problem)
            continue
        layers[module + ".weight"] = LoraLayer(up, down, _scale(module, down.shape[0], found.get("alpha"), config))
    if problems:
        raise LoraError(f"LoRA {name} does not fit this model ({len(problems)} layers): {_show(problems, 6)}")
    log.info("LoRA %s: %d layers", name, len(layers))
    return Lora(name, layers)


def _scale(module: str, rank: int, alpha: Optional[torch.Tensor], config: Optional[dict]) -> float:
    """alpha / r for one layer; a layer without any alpha gets alpha = r (scale 1), as ComfyUI does."""
    if alpha is not None:
        return float(alpha) / rank
    if config is None:
        return 1.0
    r = _pattern_value(module, config.get("rank_pattern") or {}, config.get("r", rank))
    if r != rank:
        log.warning("LoRA layer %s has rank %d but its %s says %s; using the tensors' rank", module, rank, PEFT_CONFIG, r)
    a = _pattern_value(module, config.get("alpha_pattern") or {}, config.get("lora_alpha", rank))
    return a / math.sqrt(rank) if config.get("use_rslora") else a / rank


# ---------------------------------------------------------------------------------------------
# Merging


def merged_weight(
    weight: torch.Tensor, key: str, loras: Sequence[tuple[Lora, float]], dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """`weight` + Σ strength · update of `key`, summed in fp32 and rounded once to `dtype` (default:
    the weight's)."""
    w = weight.detach().float()
    for lora, strength in loras:
        layer = lora.layers.get(key)
        if layer is not None and strength != 0:
            w = w + strength * layer.delta(weight.shape, weight.device)
    out = w.to(dtype or weight.dtype)
    if not torch.isfinite(out).all():  # later every frame would be NaN: say which LoRA and weight now
        names = ", ".join(f"{lora.name} at {strength}" for lora, strength in loras if key in lora.layers)
        raise LoraError(f"merging LoRA {names} makes {key} non-finite in {out.dtype} (its update is too large): "
                        "lower the strength, or use a LoRA trained for this model")
    return out


def _active_keys(loras: Sequence[tuple[Lora, float]]) -> list[str]:
    return sorted({k for lora, strength in loras if strength != 0 for k in lora.layers})


def merge(unet: nn.Module, loras: Sequence[tuple[Lora, float]], keep_original: bool = False) -> dict[str, torch.Tensor]:
    """Merge (lora, strength) pairs into the UNet's weights in place.

    Returns the replaced weights when `keep_original` (for `restore`, which puts them back bit for
    bit: subtracting the update again would not, after rounding to half precision), else {}.
    A strength of 0 leaves the weights untouched.
    """
    params = dict(unet.named_parameters())
    backup = {}
    for key in _active_keys(loras):
        p = params[key]
        new = merged_weight(p, key, loras)
        if keep_original:
            backup[key] = p.detach().clone()
        with torch.no_grad():
            p.copy_(new)
    return backup


def restore(unet: nn.Module, backup: Mapping[str, torch.Tensor]) -> None:
    """Put back the weights `merge(..., keep_original=True)` replaced."""
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for key, original in backup.items():
            params[key].copy_(original)


def merge_into_state(state: dict[str, torch.Tensor], loras: Sequence[tuple[Lora, float]], prefix: str) -> None:
    """Merge into a checkpoint's state dict, whose UNet keys carry `prefix` (e.g. `model.diffusion_model.`)."""
    for key in _active_keys(loras):
        state[prefix + key] = merged_weight(state[prefix + key], key, loras)


def load_specs(specs: Sequence[LoraSpec], targets: Mapping[str, torch.Size]) -> list[tuple[Lora, float]]:
    """Read every file of `specs` -> (lora, strength) pairs."""
    loras = [(load_lora(spec.path, targets), spec.strength) for spec in specs]
    for lora, strength in loras:
        log.info("read LoRA %s: %d layers, strength %g", lora.name, len(lora.layers), strength)
    return loras


def merge_specs(model, specs: Sequence[LoraSpec], keep_original: bool = False) -> dict[str, torch.Tensor]:
    """Read and merge LoRA files into a `pipeline.ToonCrafter`'s UNet; see `merge`."""
    if not specs:
        return {}
    return merge(model.unet, load_specs(specs, adaptable_shapes(model.unet.state_dict())), keep_original)
