"""Run-time placement of a loaded model for a set of `RuntimeOptions`: memory format and
torch.compile. Modules never compile themselves or pick a layout; hosts call `prepare` once
(`pipeline.interpolate` does), and calling it again with the same options does nothing.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .settings import RuntimeOptions

log = logging.getLogger(__name__)

# The compute dtypes hosts offer by name.
COMPUTE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compute_dtype_name(name: str | None, device: torch.device) -> str:
    """`name`, or the default for `device`: fp16 on CUDA, fp32 elsewhere."""
    return name or ("fp16" if device.type == "cuda" else "fp32")


def to_channels_last(module: nn.Module) -> None:
    """Convolution weights in channels-last layout, in place (4-D and 5-D weights)."""
    for p in module.parameters():
        if p.ndim == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        elif p.ndim == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)


def compile_module(module: nn.Module, options: RuntimeOptions) -> None:
    """torch.compile `module` in place (its state dict keys stay as they are). Shapes are static:
    one graph per input shape, reused by every sampling step."""
    kwargs = {"dynamic": False, "backend": options.compile_backend}
    if options.compile_mode is not None:
        kwargs["mode"] = options.compile_mode
    module.compile(**kwargs)


def prepare(model: nn.Module, options: RuntimeOptions) -> None:
    """Apply `options.channels_last` and `options.compile` to the UNet and the VAE decoder of a loaded
    `models.tooncrafter.ToonCrafter`, once."""
    key = (options.channels_last, options.compile, options.compile_mode, options.compile_backend)
    done = model.prepared or (False, False, None, None)
    if done == key or not (options.channels_last or options.compile):
        return
    if done != (False, False, None, None):
        raise ValueError(
            f"this model was already prepared with other run-time options {done}; load it again to change them"
        )
    if options.channels_last:
        to_channels_last(model.unet)
        to_channels_last(model.vae.decoder)
    if options.compile:
        log.info("compiling the UNet and the VAE decoder (%s); the first run of each shape is slow", options.compile_backend)
        compile_module(model.unet, options)
        compile_module(model.vae.decoder, options)
    model.prepared = key


def usable_device(name: str) -> torch.device:
    """The device a command line's --device names, checked before anything is loaded onto it."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device name ({e}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this PyTorch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else "PyTorch sees no CUDA GPU here (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides it)"
            )
            raise ValueError(f"--device {name}: {why}; run with --device cpu (slow) or on a machine with an NVIDIA GPU")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: Apple's MPS backend is not available here; run with --device cpu")
    return device
