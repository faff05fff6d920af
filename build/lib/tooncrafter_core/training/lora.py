"""LoRA fine-tuning: adapters on the UNet (PEFT), trained on clips of the items with the v-prediction
loss the model was trained with (`v`) or the LoRA fork's L1 on the noise plus LPIPS (`kdq`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import frames as tc_frames
from ..datasets import TrainingItem, window, window_starts
from ..keyframes import encode_keyframes
from ..models.tooncrafter import ToonCrafter
from ..pipeline import interpolate
from ..settings import RuntimeOptions, SamplingConfig
from . import adapters
from .encodings import EncodingSettings, ItemEncoding, clip_batch, load_frames
from .objective import LpipsFn, kdq_loss, noise_clip, prediction_loss

log = logging.getLogger(__name__)

LOSSES = ("v", "kdq")
SAMPLE_ITEMS = 4  # validation items drawn side by side in the sample GIFs


@dataclass(frozen=True)
class StepSettings:
    """What a micro-batch is made of and how its loss is taken."""

    batch: int = 1
    fs: int = 10
    loss: str = "v"
    lpips_weight: float = 1.0
    cond_dropout: float = 0.0  # share of clips trained on the original's negative context
    sample_steps: int = 25
    seed: int = 0


def draw_picks(items: Sequence[TrainingItem], frames: int, batch: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """`batch` (item, window start) pairs drawn uniformly from `generator`."""
    picks = []
    for _ in range(batch):
        index = int(torch.randint(len(items), (1,), generator=generator))
        start = int(torch.randint(window_starts(items[index], frames), (1,), generator=generator))
        picks.append((index, start))
    return picks


def sample_gif(
    model: ToonCrafter, items: Sequence[TrainingItem], encoding: EncodingSettings, step: StepSettings, device,
    dtype: torch.dtype, path: Path,
) -> Optional[Path]:
    """The first items interpolated from their keyframes by `model` as it is now, side by side in a GIF."""
    if not items:
        return None
    videos = []
    for item in items[:SAMPLE_ITEMS]:
        pixels = load_frames(item, encoding)
        indices, _ = window(item, encoding.frames, 0)
        with torch.no_grad():
            video = interpolate(
                model, pixels[indices[0]][None], pixels[indices[-1]][None], item.prompt,
                SamplingConfig(steps=step.sample_steps, fs=step.fs), RuntimeOptions(torch.device(device), dtype),
                frames=encoding.frames, generator=torch.Generator().manual_seed(step.seed),
            )
        videos.append(tc_frames.from_model(video[0]))  # (3 T H W)
    return tc_frames.save_gif(torch.cat(videos, dim=-1).transpose(0, 1), path)


class LoraTask:
    """The loop's task: LoRA layers on `model.unet`, trained on `items`."""

    def __init__(
        self,
        model: ToonCrafter,
        items: Sequence[TrainingItem],
        encodings: Sequence[ItemEncoding],
        val: tuple[Sequence[TrainingItem], Sequence[ItemEncoding]],
        encoding: EncodingSettings,
        lora: adapters.LoraSettings,
        step: StepSettings,
        uncond: torch.Tensor,
        device,
        dtype: torch.dtype,
        lpips: Optional[LpipsFn] = None,
    ):
        self.model, self.items, self.encodings = model, list(items), list(encodings)
        self.val_items, self.val_encodings = list(val[0]), list(val[1])
        self.encoding, self.lora, self.step = encoding, lora, step
        self.uncond, self.device, self.dtype, self.lpips = uncond, torch.device(device), dtype, lpips
        self.modules = adapters.add_lora(model.unet, lora, step.seed)
        self._pixels: dict[int, torch.Tensor] = {}
        log.info("LoRA rank %d alpha %g on %d layers, %d trainable parameters", lora.rank, lora.alpha, len(self.modules),
                 sum(p.numel() for p in self.parameters()))

    def parameters(self):
        return list(adapters.lora_parameters(self.model.unet).values())

    def train(self, mode: bool) -> None:
        self.model.unet.train(mode)

    def _loss(self, items, encodings, picks, generator: torch.Generator) -> torch.Tensor:
        cfg = self.model.config
        frames = self.encoding.frames
        x0, concat, context, mask = clip_batch(encodings, items, picks, frames, cfg.vae.scale_factor, generator)
        if self.step.cond_dropout > 0:
            dropped = torch.rand(len(picks), generator=generator) < self.step.cond_dropout
            context[dropped] = self.uncond.to(context)
        dev, dtype = self.device, self.dtype
        noised = noise_clip(self.model.schedule, x0.to(dev), generator)
        fs = torch.full((len(picks),), self.step.fs, dtype=torch.long, device=dev)
        x_in = torch.cat([noised.x_t, concat.to(dev)], dim=1).to(dtype)
        v = self.model.unet(x_in, noised.t, context.to(dev, dtype), fs)
        mask = mask.to(dev)
        if self.step.loss == "v":
            return prediction_loss(v, noised, mask)
        decode, truth = None, None
        if self.step.lpips_weight > 0:
            decode, truth = self._decoder(items, picks)
        return kdq_loss(self.model.schedule, v, noised, mask, self.lpips, self.step.lpips_weight, decode, truth)

    def _decoder(self, items, picks):
        """The decode of x0 predictions with the keyframes' reference features, and the true frames
        (b 3 T H W, unsupervised frames zero)."""
        frames = self.encoding.frames
        truth, starts, ends = [], [], []
        for index, start in picks:
            pixels = self._pixels.setdefault(id(items[index]), load_frames(items[index], self.encoding))
            indices, positions = window(items[index], frames, start)
            clip = torch.zeros(frames, *pixels.shape[1:])
            clip[positions] = pixels[indices]
            truth.append(clip.transpose(0, 1))
            starts.append(pixels[indices[0]])
            ends.append(pixels[indices[-1]])
        with torch.no_grad():
            refs = encode_keyframes(self.model.vae, torch.stack(starts).to(self.device, self.dtype),
                                    torch.stack(ends).to(self.device, self.dtype)).refs
        scale = self.model.config.vae.scale_factor

        def decode(x0: torch.Tensor) -> torch.Tensor:
            return self.model.vae.decode((x0 / scale).to(self.dtype), refs).float()

        return decode, torch.stack(truth).to(self.device)

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        picks = draw_picks(self.items, self.encoding.frames, self.step.batch, generator)
        return self._loss(self.items, self.encodings, picks, generator)

    def val_loss(self) -> Optional[float]:
        if not self.val_items:
            return None
        generator = torch.Generator().manual_seed(self.step.seed + 1)
        with torch.no_grad():
            losses = [self._loss(self.val_items, self.val_encodings, [(i, 0)], generator).item()
                      for i in range(len(self.val_items))]
        return sum(losses) / len(losses)

    def samples(self, path: Path) -> Optional[Path]:
        return sample_gif(self.model, self.val_items, self.encoding, self.step, self.device, self.dtype, path)

    def save(self, folder: Path) -> None:
        adapters.save_adapter(folder, self.model.unet, self.lora, self.modules)

    def load(self, folder: Path) -> None:
        adapters.load_lora_state(self.model.unet, adapters.read_adapter(folder))
