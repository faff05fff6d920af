"""ComfyUI's `transformer_options` patches -> the core UNet's hooks (`tooncrafter_core.models.unet_call`).

Each ComfyUI patch function is wrapped into the core's signature; it receives the `extra_options` dict
ComfyUI's own UNet gives it (block, block_index, n_heads, dim_head, original_shape, cond_or_uncond,
sigmas, ...). A patch kind the UNet has no place for is refused by name, never skipped.
"""

from __future__ import annotations

from typing import Callable

from ..tooncrafter_core.errors import InputError
from ..tooncrafter_core.models.unet_call import NO_HOOKS, AttentionHooks, AttentionSite, UNetHooks

# transformer_options["patches"] keys and their hook, and the patches_replace kinds the UNet honours.
ATTENTION_PATCHES = {"attn1_patch", "attn1_output_patch", "attn2_patch", "attn2_output_patch"}
BLOCK_PATCHES = {"input_block_patch", "input_block_patch_after_skip", "output_block_patch", "middle_patch"}
REPLACEMENTS = {"attn1", "attn2"}

# What a refused patch kind belongs to, for the message.
FOREIGN = {
    "dit": "DiT models' layer replacements (SkipLayerGuidanceDiT / SD3); ToonCrafter is a UNet: use "
    "PerturbedAttentionGuidance for layer-perturbation guidance",
    "double_block": "Flux / Qwen-Image double blocks (e.g. USOStyleReference, QwenImageDiffsynthControlnet)",
    "single_block": "Flux single blocks",
    "emb_patch": "timestep-embedding patches",
    "forward_timestep_embed_patch": "patches of layers ToonCrafter's blocks do not have",
}


# transformer_options entries that belong to another model family and would do nothing here.
FOREIGN_OPTIONS = {
    "chroma_radiance_options": "ChromaRadianceOptions is for Chroma Radiance's decoder",
}


def unhonoured(transformer_options: dict) -> list[str]:
    """Patch kinds in `transformer_options` that ToonCrafter's UNet has no hook for."""
    patches = transformer_options.get("patches") or {}
    replace = transformer_options.get("patches_replace") or {}
    names = [k for k, v in patches.items() if v and k not in ATTENTION_PATCHES | BLOCK_PATCHES]
    return names + [k for k, v in replace.items() if v and k not in REPLACEMENTS]


def check_honoured(transformer_options: dict) -> None:
    for key, why in FOREIGN_OPTIONS.items():
        if key in transformer_options:
            raise InputError(f"{why}; it does nothing on ToonCrafter: remove it")
    names = unhonoured(transformer_options)
    if names:
        what = "; ".join(f"{n}: {FOREIGN.get(n, 'made for another model family')}" for n in names)
        raise InputError(
            f"a node before the sampler patches the model with {', '.join(names)}, which ToonCrafter's UNet has no "
            f"place for ({what}); remove that node"
        )


def unet_hooks(transformer_options: dict) -> UNetHooks:
    """The hooks for one UNet call; NO_HOOKS (the unpatched fast path) when nothing is patched."""
    check_honoured(transformer_options)
    patches = transformer_options.get("patches") or {}
    replace = transformer_options.get("patches_replace") or {}
    if not any(patches.values()) and not any(replace.values()):
        return NO_HOOKS
    shared = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}

    def options(site: AttentionSite) -> dict:
        return {
            **shared, "block": site.block, "block_index": site.index, "transformer_index": site.transformer_index,
            "n_heads": site.heads, "dim_head": site.dim_head, "attn_precision": None,
            "activations_shape": list(site.activations),
        }

    def block_options(key) -> dict:
        return {**shared, "block": key}

    def attention(n: int) -> AttentionHooks:
        def inputs(p: Callable):
            return lambda x, context, value, site: tuple(p(x, context, value, options(site)))

        def replacement(p: Callable):
            return lambda q, k, v, site: p(q, k, v, options(site))

        def outputs(p: Callable):
            return lambda out, site: p(out, options(site))

        return AttentionHooks(
            inputs=tuple(inputs(p) for p in patches.get(f"attn{n}_patch", ())),
            replacements={key: replacement(p) for key, p in (replace.get(f"attn{n}") or {}).items()},
            outputs=tuple(outputs(p) for p in patches.get(f"attn{n}_output_patch", ())),
        )

    def middle(p: Callable):
        return lambda x, site: p(x, options(site))

    def block(p: Callable):
        return lambda h, key: p(h, block_options(key))

    def output(p: Callable):
        return lambda h, skip, key: tuple(p(h, skip, block_options(key)))

    return UNetHooks(
        attn1=attention(1),
        attn2=attention(2),
        middle=tuple(middle(p) for p in patches.get("middle_patch", ())),
        input_block=tuple(block(p) for p in patches.get("input_block_patch", ())),
        input_block_after_skip=tuple(block(p) for p in patches.get("input_block_patch_after_skip", ())),
        output_block=tuple(output(p) for p in patches.get("output_block_patch", ())),
    )
