"""Control networks on the native model: sketch guidance (`SketchControl`), any stock ComfyUI control
(`FramesControl`: ControlNetLoader + ControlNetApply / ControlNetApplyAdvanced) on video latents, and
ComfyUI's control dict -> the core UNet's residuals.
"""

from __future__ import annotations

from typing import Optional

import comfy.controlnet
import comfy.model_management as mm
import comfy.model_patcher
import torch
from einops import rearrange

from ..tooncrafter_core import errors, guidance, sketches
from ..tooncrafter_core.models.sketch_encoder import SketchEncoder, controls
from ..tooncrafter_core.models.unet_call import ControlResiduals
from ..tooncrafter_core.noise_levels import NoiseLevels


def window_frames(transformer_options: dict, frames: int) -> list[int]:
    """The clip frames a call samples: a context window's (ContextWindowsManual), else all of them."""
    window = transformer_options.get("context_window")
    return list(range(frames)) if window is None else list(window.index_list)


class SketchControl(comfy.controlnet.ControlBase):
    """The sketch encoder on the conditioning, as ComfyUI's ControlNets are: ComfyUI loads its patcher
    with the model and asks it for residuals at every UNet call (both guidance passes)."""

    def __init__(self, encoder: comfy.model_patcher.ModelPatcher, hint: torch.Tensor, scale: float):
        super().__init__()
        self.encoder = encoder
        self.hint = hint  # (1 1 t H W) in [0, 1]
        self.scale = scale
        self.levels: Optional[NoiseLevels] = None
        self.dtype = torch.float32
        self.features = None

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.levels, self.dtype = model.levels, model.compute_dtype

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        net: SketchEncoder = self.encoder.model
        if self.features is None or self.features.device != x_noisy.device:
            # The hint block sees neither the timestep nor the context, and each frame alone: one set of
            # features a run, a context window takes its frames' rows.
            self.features = net.hint_features(self.hint.to(x_noisy.device, self.dtype))
        frames = window_frames(transformer_options, self.hint.shape[2])
        guidance.check_sketch(self.hint[:, :, frames], x_noisy)
        c = self.levels.coefficients(t)
        x_t = self.levels.model_input(t, x_noisy.float(), c).to(self.dtype)
        features = self.features[frames].repeat(x_noisy.shape[0], 1, 1, 1)  # ((b t) c h w), the same sketches for every entry
        context = mm.cast_to_device(cond["c_crossattn"], x_noisy.device, self.dtype)
        residuals = controls(net, x_t, c.t.to(x_noisy.device, torch.float32), context, features, self.scale)
        out = {"input": [], "middle": [residuals[-1]], "output": residuals[:-1]}
        return self.control_merge(out, prev, output_dtype=None)

    def get_models(self):
        return super().get_models() + [self.encoder]

    def copy(self):
        c = SketchControl(self.encoder, self.hint, self.scale)
        self.copy_to(c)
        return c

    def cleanup(self):
        self.features = None
        self.levels = None
        super().cleanup()


def _hint_channels(control) -> Optional[int]:
    """Input channels of a ControlNet's hint block (None where it has none, e.g. a T2I-Adapter)."""
    block = getattr(getattr(control, "control_model", None), "input_hint_block", None)
    if block is None:
        return None
    return next(m for m in block.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


class FramesControl(comfy.controlnet.ControlBase):
    """A stock ComfyUI control on ToonCrafter's video latents. ComfyUI's control models take image
    latents (b c h w); each frame goes through as an image with the clip's timestep and context and its
    own hint: one control image steers every frame, T images (a batch) one frame each. A 1-channel hint
    (the released sketch encoder loaded by ControlNetLoader) gets the image's luma inverted, lines 1 on
    paper 0, as sketch guidance prepares it."""

    def __init__(self, inner: comfy.controlnet.ControlBase):
        super().__init__()
        self.inner = inner
        self.hints = inner.cond_hint_original  # (k c H W)
        self.selected: Optional[tuple[int, ...]] = None
        if _hint_channels(inner) == 1 and self.hints is not None and self.hints.shape[1] == 3:
            inner.preprocess_image = sketches.sketch_pixels

    def _select(self, transformer_options: dict, frames: int) -> None:
        k = self.hints.shape[0]
        window = transformer_options.get("context_window")
        if k == 1:
            return
        chosen = window_frames(transformer_options, frames)
        if (window is None and k != frames) or max(chosen) >= k:
            raise errors.InputError(
                f"the ControlNet's image has {k} frames for a clip of {frames if window is None else 'more'} frames: "
                "give one image (it steers every frame) or one per frame"
            )
        if tuple(chosen) != self.selected:
            self.selected = tuple(chosen)
            self.inner.cond_hint_original = self.hints[list(chosen)]
            self.inner.cond_hint = None

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
        prev = None
        if self.previous_controlnet is not None:
            prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        b, frames = x_noisy.shape[0], x_noisy.shape[2]
        self._select(transformer_options, frames)
        folded = {
            key: value.repeat_interleave(frames, dim=0)
            for key, value in cond.items()
            if key != "c_concat" and isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == b
        }
        try:
            out = self.inner.get_control(
                rearrange(x_noisy, "b c t h w -> (b t) c h w"), t.repeat_interleave(frames), {**cond, **folded},
                batched_number, transformer_options,
            )
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise errors.InputError(
                f"this ControlNet does not fit ToonCrafter ({e}); ToonCrafter takes SD 2.x ControlNets (OpenCLIP "
                "ViT-H, 1024-wide text context, 320/640/1280 channels) such as its sketch encoder"
            ) from None
        if out is None:
            return prev
        return self.control_merge(out, prev, output_dtype=None)

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.inner.pre_run(model, percent_to_timestep_function)

    def cleanup(self):
        self.inner.cleanup()
        self.inner.cond_hint_original = self.hints
        self.selected = None
        super().cleanup()

    def get_models(self):
        return super().get_models() + self.inner.get_models()

    def get_extra_hooks(self):
        return super().get_extra_hooks() + self.inner.get_extra_hooks()

    def inference_memory_requirements(self, dtype):
        return super().inference_memory_requirements(dtype) + self.inner.inference_memory_requirements(dtype)

    def copy(self):
        inner = self.inner.copy()
        inner.cond_hint_original = self.hints
        c = FramesControl(inner)
        self.copy_to(c)
        return c


def video_controls(control, adapted: dict):
    """A copy of a conditioning's control chain in which every stock control is a `FramesControl`;
    `adapted` maps controls already adapted (by id) to their copy, so positive and negative keep
    sharing one (ComfyUI batches them together only then)."""
    if control is None:
        return None
    if id(control) not in adapted:
        copy = control.copy() if isinstance(control, (SketchControl, FramesControl)) else FramesControl(control.copy())
        copy.set_previous_controlnet(video_controls(control.previous_controlnet, adapted))
        adapted[id(control)] = copy
    return adapted[id(control)]


def control_residuals(control: Optional[dict], input_blocks: int) -> Optional[ControlResiduals]:
    """ComfyUI's control dict ({"input", "middle", "output"} lists, each consumed from its end as
    ComfyUI's UNet does) -> the core's residuals for a UNet with `input_blocks` skip connections."""
    if not control:
        return None
    outputs = list(control.get("output") or [])
    inputs = list(control.get("input") or [])
    if len(outputs) > input_blocks or len(inputs) > input_blocks:
        raise errors.InputError(
            f"the control network gives {max(len(outputs), len(inputs))} residuals for a UNet with {input_blocks} "
            "blocks: it was made for another model"
        )
    middle = control.get("middle") or [None]
    return ControlResiduals(skips=[None] * (input_blocks - len(outputs)) + outputs, middle=middle[-1],
                            inputs=inputs[::-1])
