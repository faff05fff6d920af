"""What other nodes put on a ToonCrafter MODEL, checked and adapted before each sampling run.

`before_sampling` is the native model's OUTER_SAMPLE wrapper. Before ComfyUI loads anything it
refuses what cannot apply to ToonCrafter (a replaced noise process, patches for another family's
layers, context windows over the wrong axis), adapts the guidance functions of nodes written for
frames-in-batch latents, and puts stock ControlNets on video latents (`controls.FramesControl`).
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from einops import rearrange

from ..tooncrafter_core.errors import InputError
from .controls import video_controls
from .unet_patches import check_honoured

WRAPPER_KEY = "tooncrafter"
FRAME_AXIS = 2  # of ToonCrafter's latents (b c t h w)

REPLACED_SAMPLING = (
    "a ModelSampling node (ModelSamplingDiscrete, ModelSamplingSD3, ModelSamplingFlux, ...) replaces ToonCrafter's "
    "noise process (v-prediction with zero terminal SNR and the original's dynamic rescale) with another one the "
    "model was not trained for; remove it (ToonCrafter Sigmas / any scheduler already sample ToonCrafter's own)"
)

# Modules (ComfyUI's comfy_extras) whose guidance functions were written for latents with frames in the
# batch (image models, SVD): they see ToonCrafter's frames the same way, one clip at a time.
FRAMES_IN_BATCH = ("nodes_sag", "nodes_video_model", "nodes_latent")
# Modules whose guidance functions patch layers only another family has, and what to use instead.
FOREIGN_FUNCTIONS = {
    "nodes_slg": "SkipLayerGuidanceDiT / SD3 skip DiT layers (dit patches), which ToonCrafter's UNet does not have; "
    "use PerturbedAttentionGuidance for layer-perturbation guidance",
}
TRAINING = (
    "ComfyUI's TrainLoraNode trains on LATENTs of your clips, which no node makes for ToonCrafter (ToonCrafter "
    "Conditioning's latent holds the keyframes only), and with another objective than the original's; use "
    "ToonCrafter Train LoRA (a folder of clips -> a LoRA in models/loras, loaded by Load ToonCrafter LoRA or LoraLoader)"
)
SAMPLER_FUNCTIONS = ("sampler_pre_cfg_function", "sampler_post_cfg_function")


def before_sampling(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper (ComfyUI's CFGGuider): the guider's options and conditioning are this run's
    copies, so what is adapted here lasts one run."""
    guider = executor.class_obj
    sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
    if _module(type(sampler)) == "nodes_train":
        raise InputError(TRAINING)
    check_model(guider.model_patcher, guider.model_options)
    options = guider.model_options
    for name in SAMPLER_FUNCTIONS:
        if name in options:
            options[name] = [frames_in_batch(fn) for fn in options[name]]
    if "sampler_cfg_function" in options:
        options["sampler_cfg_function"] = frames_in_batch(options["sampler_cfg_function"])
    adapted: dict = {}
    guider.conds = {
        name: [_with_video_control(c, adapted) for c in conds] for name, conds in guider.conds.items()
    }
    return executor(*args, **kwargs)


def check_model(patcher, options: dict) -> None:
    """One-line refusals for what cannot apply to ToonCrafter, before anything is loaded."""
    sampling = patcher.object_patches.get("model_sampling")
    if sampling is not None and getattr(sampling, "levels", None) is None:  # not ToonCrafter's NoiseLevels
        raise InputError(REPLACED_SAMPLING)
    check_honoured(options.get("transformer_options", {}))
    functions = [f for name in SAMPLER_FUNCTIONS for f in options.get(name, [])]
    functions += [options[k] for k in ("sampler_cfg_function", "sampler_calc_cond_batch_function") if k in options]
    for fn in functions:
        if _module(fn) in FOREIGN_FUNCTIONS:
            raise InputError(FOREIGN_FUNCTIONS[_module(fn)] + "; remove that node")
    handler = options.get("context_handler")
    if handler is not None and getattr(handler, "dim", FRAME_AXIS) != FRAME_AXIS:
        raise InputError(
            f"context windows over dim {handler.dim}: ToonCrafter's latents are (batch, channels, frames, height, "
            f"width), set ContextWindowsManual's dim to {FRAME_AXIS} (the frames)"
        )


def _with_video_control(cond: dict, adapted: dict) -> dict:
    if cond.get("control") is None:
        return cond
    return {**cond, "control": video_controls(cond["control"], adapted)}


def frames_in_batch(fn: Callable) -> Callable:
    """`fn` as it is, or, for a function of `FRAMES_IN_BATCH`, one that sees the clip's frames as a batch
    of images ((b t) c h w, its σ repeated per frame) and hands its result back as the clip's."""
    if _module(fn) not in FRAMES_IN_BATCH or getattr(fn, "_tooncrafter_frames", False):
        return fn

    def adapted(args: dict):
        frames = _frames(args)
        if frames is None:
            return fn(args)
        out = fn({k: _fold(v, frames) for k, v in args.items()})
        return [_unfold(o, frames) for o in out] if isinstance(out, list) else _unfold(out, frames)

    adapted._tooncrafter_frames = True
    return adapted


def _module(obj) -> str:
    """The file name of the module `obj` was defined in: ComfyUI names the comfy_extras modules it loads
    by their path ("/.../comfy_extras/nodes_sag"), an import by its dotted name."""
    return re.split(r"[./\\]", getattr(obj, "__module__", None) or "")[-1]


def _frames(args: dict):
    for value in args.values():
        if isinstance(value, torch.Tensor) and value.ndim == 5:
            return value.shape[FRAME_AXIS]
    return None


def _fold(value, frames: int):
    if isinstance(value, list):
        return [_fold(v, frames) for v in value]
    if not isinstance(value, torch.Tensor):
        return value
    if value.ndim == 5:
        return rearrange(value, "b c t h w -> (b t) c h w")
    if value.ndim == 1:  # σ per clip -> per frame
        return value.repeat_interleave(frames)
    return value


def _unfold(value, frames: int):
    if isinstance(value, torch.Tensor) and value.ndim == 4:
        return rearrange(value, "(b t) c h w -> b c t h w", t=frames)
    return value
