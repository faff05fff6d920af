"""Distillation into a smaller student UNet: the teacher (frozen, optionally with a LoRA merged in) and
the student see the same noised clip; the student learns the teacher's prediction.

Two regimes, as the LoRA fork: from a plain teacher, image-space losses on the decoded x0 predictions
(L1 and LPIPS); from a LoRA teacher, also a latent SmoothL1 on x0 and an MSE on the predicted noise.
The student keeps the teacher's VAE, encoders and Resampler (frozen): it is saved as a whole
checkpoint with the student's UNet, which the loader reads like any other.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .. import files
from ..datasets import TrainingItem, window
from ..keyframes import encode_keyframes
from ..models.config import ModelConfig
from ..models.init import normal_init_
from ..models.tooncrafter import ToonCrafter
from ..models.unet import UNetModel
from ..weights.checkpoint import UNET_PREFIX
from ..weights.convert import copy_companions
from .encodings import EncodingSettings, ItemEncoding, clip_batch, load_frames
from .lora import StepSettings, draw_picks, sample_gif
from .objective import LpipsFn, eps_from_output, image_losses, noise_clip, x0_from_output

log = logging.getLogger(__name__)

REGIMES = ("image", "image+latent+noise")
STUDENT_UNET = "student_unet.safetensors"


@dataclass(frozen=True)
class DistillWeights:
    """The fork's loss weights: image L1, image LPIPS, latent SmoothL1, noise MSE."""

    l1: float = 1.0
    lpips: float = 0.5
    latent: float = 0.5
    noise: float = 0.25


def student_config(teacher: ModelConfig, student: ModelConfig) -> ModelConfig:
    """The teacher's configuration with the student's UNet; everything the UNet shares with the rest
    of the model (channels, context, frames) must stay."""
    t, s = teacher.unet, student.unet
    fixed = ("in_channels", "out_channels", "context_dim", "temporal_length", "image_cross_attention", "fs_condition",
             "text_tokens", "image_tokens_per_frame")
    differ = [f"{name} {getattr(s, name)} (teacher {getattr(t, name)})" for name in fixed if getattr(s, name) != getattr(t, name)]
    if differ:
        raise ValueError(
            f"the student's UNet must plug into the teacher's VAE, encoders and Resampler; these differ: {', '.join(differ)}. "
            "Change channel widths (model_channels, channel_mult), num_res_blocks, transformer_depth or attention levels only"
        )
    return replace(teacher, unet=s)


def build_student(config: ModelConfig, teacher_unet: UNetModel, seed: int) -> UNetModel:
    """The student UNet in fp32: every tensor whose name and shape the teacher has starts as the
    teacher's, the others from N(0, 0.02²) (norms 1 and 0)."""
    try:
        with torch.device("meta"):
            student = UNetModel(config.unet)
    except ValueError as e:
        raise ValueError(
            f"the student's UNet cannot be built ({e}): every level's width (model_channels x channel_mult) must be a "
            "multiple of 32, the GroupNorm groups"
        ) from None
    student.to_empty(device="cpu")
    normal_init_(student, 0.02, torch.Generator().manual_seed(seed))
    teacher_state = teacher_unet.state_dict()
    copied = 0
    with torch.no_grad():
        for key, p in student.state_dict(keep_vars=True).items():
            source = teacher_state.get(key)
            if source is not None and source.shape == p.shape:
                p.data.copy_(source.float())
                copied += 1
    log.info("student UNet: %.1f M parameters (teacher %.1f M), %d tensors copied from the teacher",
             sum(p.numel() for p in student.parameters()) / 1e6, sum(p.numel() for p in teacher_unet.parameters()) / 1e6,
             copied)
    return student.requires_grad_(True).train()


class DistillTask:
    """The loop's task: the student UNet learns the teacher's predictions on clips of `items`."""

    def __init__(
        self,
        teacher: ToonCrafter,
        student: UNetModel,
        items: Sequence[TrainingItem],
        encodings: Sequence[ItemEncoding],
        val: tuple[Sequence[TrainingItem], Sequence[ItemEncoding]],
        encoding: EncodingSettings,
        weights: DistillWeights,
        regime: str,
        batch: int,
        fs: int,
        device,
        dtype: torch.dtype,
        lpips: Optional[LpipsFn],
        seed: int = 0,
        sample_steps: int = 25,
    ):
        self.teacher, self.student = teacher, student.to(device)
        self.items, self.encodings = list(items), list(encodings)
        self.val_items, self.val_encodings = list(val[0]), list(val[1])
        self.encoding, self.weights, self.regime = encoding, weights, regime
        self.batch, self.fs, self.device, self.dtype, self.lpips, self.seed = batch, fs, torch.device(device), dtype, lpips, seed
        self.sample_steps = sample_steps
        self._pixels: dict[int, torch.Tensor] = {}

    def parameters(self):
        return list(self.student.parameters())

    def train(self, mode: bool) -> None:
        self.student.train(mode)

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _refs(self, items, picks):
        starts, ends = [], []
        for index, start in picks:
            pixels = self._pixels.setdefault(id(items[index]), load_frames(items[index], self.encoding))
            indices, _ = window(items[index], self.encoding.frames, start)
            starts.append(pixels[indices[0]])
            ends.append(pixels[indices[-1]])
        with torch.no_grad():
            return encode_keyframes(self.teacher.vae, torch.stack(starts).to(self.device, self.dtype),
                                    torch.stack(ends).to(self.device, self.dtype)).refs

    def _loss(self, items, encodings, picks, generator) -> torch.Tensor:
        schedule, scale = self.teacher.schedule, self.teacher.config.vae.scale_factor
        x0, concat, context, _ = clip_batch(encodings, items, picks, self.encoding.frames, scale, generator)
        noised = noise_clip(schedule, x0.to(self.device), generator)
        fs = torch.full((len(picks),), self.fs, dtype=torch.long, device=self.device)
        x_in = torch.cat([noised.x_t, concat.to(self.device)], dim=1)
        ctx = context.to(self.device)
        with torch.no_grad():
            v_teacher = self.teacher.unet(x_in.to(self.dtype), noised.t, ctx.to(self.dtype), fs).float()
        with self._autocast():
            v_student = self.student(x_in, noised.t, ctx, fs).float()
        x0_teacher = x0_from_output(schedule, noised.x_t, noised.t, v_teacher)
        x0_student = x0_from_output(schedule, noised.x_t, noised.t, v_student)
        refs = self._refs(items, picks)

        def decode(x0_latent):
            return self.teacher.vae.decode((x0_latent / scale).to(self.dtype), refs).float()

        with torch.no_grad():
            target = decode(x0_teacher)
        l1, perceptual = image_losses(decode(x0_student), target, self.lpips, self.weights.lpips)
        loss = self.weights.l1 * l1 + self.weights.lpips * perceptual
        if self.regime == "image+latent+noise":
            eps_teacher = eps_from_output(schedule, noised.x_t, noised.t, v_teacher)
            eps_student = eps_from_output(schedule, noised.x_t, noised.t, v_student)
            loss = loss + self.weights.latent * F.smooth_l1_loss(x0_student, x0_teacher)
            loss = loss + self.weights.noise * F.mse_loss(eps_student, eps_teacher)
        return loss

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        picks = draw_picks(self.items, self.encoding.frames, self.batch, generator)
        return self._loss(self.items, self.encodings, picks, generator)

    def val_loss(self) -> Optional[float]:
        if not self.val_items:
            return None
        generator = torch.Generator().manual_seed(self.seed + 1)
        with torch.no_grad():
            losses = [self._loss(self.val_items, self.val_encodings, [(i, 0)], generator).item()
                      for i in range(len(self.val_items))]
        return sum(losses) / len(losses)

    def samples(self, path: Path) -> Optional[Path]:
        """The validation items interpolated with the student in the teacher's place."""
        container = self.teacher.model
        teacher_unet = container.diffusion_model
        container.diffusion_model = self.student
        try:
            with self._autocast():
                return sample_gif(self.teacher, self.val_items, self.encoding,
                                  StepSettings(fs=self.fs, sample_steps=self.sample_steps, seed=self.seed),
                                  self.device, torch.float32 if self.dtype == torch.float32 else self.dtype, path)
        finally:
            container.diffusion_model = teacher_unet

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.student.state_dict().items()}
        with files.atomic_path(folder / STUDENT_UNET) as partial:
            save_file(state, str(partial))

    def load(self, folder: Path) -> None:
        self.student.load_state_dict(load_file(str(folder / STUDENT_UNET)))

    def export(self, path: Path, config_yaml: Optional[Path], dtype: Optional[torch.dtype] = None) -> Path:
        """A whole checkpoint: the teacher's VAE, encoders and Resampler with the student's UNet (in
        `dtype`, default the teacher's), and the student's yaml beside it with the same stem."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.teacher.state_dict().items()
                 if not k.startswith(UNET_PREFIX)}
        unet_dtype = dtype or next(self.teacher.unet.parameters()).dtype
        for key, value in self.student.state_dict().items():
            state[UNET_PREFIX + key] = value.detach().to("cpu", unet_dtype).contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(path) as partial:  # a checkpoint loader never sees a truncated file
            save_file(state, str(partial), metadata={"tooncrafter_student": "1"})
        if config_yaml is not None:
            copy_companions(config_yaml, path)
        return path
