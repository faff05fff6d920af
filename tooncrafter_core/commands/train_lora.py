"""`python -m tooncrafter_core train-lora --data DIR --ckpt CKPT --out DIR`: a LoRA for the UNet, trained on
your own triplet or clip folders (needs peft: pip install peft, or ".[train]" in the pack's folder)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .. import pipeline
from ..datasets import find_training_items
from ..runtime import COMPUTE_DTYPES, usable_device
from ..training import adapters, loop
from ..training.encodings import EncodingSettings, checkpoint_identity, encode_items, unconditional_context
from ..training.lora import LOSSES, LoraTask, StepSettings
from ..training.objective import load_lpips
from ..weights import catalog
from ..weights.checkpoint import load_for
from .common import add_device_argument, add_models_dir_argument, add_size_arguments, check_out_dir, resolve_models_dir

log = logging.getLogger(__name__)


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Options every training command takes: data, size, optimisation, checkpoints and logs."""
    p.add_argument("--data", type=Path, required=True,
                   help="folder of training items: triplet folders (frame1/frame2/frame3, as ATD-12K) or clip folders "
                   "(two or more frames in name order); an optional prompt.txt in an item's folder is its prompt")
    p.add_argument("--val", type=Path, help="validation items in the same layout: a loss column and sample GIFs")
    p.add_argument("--val-every", type=int, default=0, help="steps between validations (0: only at the end)")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoints/, train_log.csv, loss.png, samples/)")
    add_models_dir_argument(p)
    p.add_argument("--prompt", default="", help="prompt of the items without a prompt.txt")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (AdamW)")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warmup")
    p.add_argument("--batch", type=int, default=1, help="clips per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    add_size_arguments(p, "training", "frames per training clip (default: the model's, 16)", "frames")
    p.add_argument("--fs", type=int, default=10, help="frame-stride condition of the training clips")
    p.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES),
                   help="compute dtype of the frozen model (trained weights stay fp32; fp16 uses loss scaling); "
                   "default bf16 on CUDA, fp32 on the CPU")
    add_device_argument(p)
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the UNet's activations in the backward pass: much less memory, about a third slower")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order, the noise and the timesteps")
    p.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: only at the end and on Ctrl-C)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of the validation samples")
    p.add_argument("--cache", type=Path, help="where the frozen encodings are cached (default: OUT/cache)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-lora",
        help="train a LoRA for the UNet on your own triplets or clips",
        description="Train LoRA adapters (PEFT) on the UNet's layers. The frozen parts (VAE encodings, text and image "
        "contexts) are computed once per item and cached; a step runs the UNet forward and backward only. The result "
        "(OUT/adapter_model.safetensors + adapter_config.json, and a kohya copy OUT/lora_kohya.safetensors) goes to "
        "--lora, Load ToonCrafter LoRA or ComfyUI's LoraLoaderModelOnly.",
    )
    p.add_argument("--ckpt", type=Path, help="checkpoint to adapt; omitted: download the default release")
    add_training_arguments(p)
    p.add_argument("--rank", type=int, default=16, help="LoRA rank")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (the update is alpha/rank * B·A)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout on the LoRA layers' input")
    p.add_argument("--targets", nargs="+", default=["attn2"], metavar="PATTERN",
                   help="layers to adapt: attn2 (the spatial cross-attention projections, as the published LoRAs) or "
                   "regular expressions of full module names")
    p.add_argument("--loss", choices=LOSSES, default="v",
                   help="v: the v-prediction MSE the model was trained with; kdq: L1 on the predicted noise plus "
                   "--lpips-weight x LPIPS of the decoded frames (needs the eval extra)")
    p.add_argument("--lpips-weight", type=float, default=1.0, help="weight of LPIPS in the kdq loss (0: L1 only)")
    p.add_argument("--cond-dropout", type=float, default=0.0,
                   help="share of clips trained with the empty prompt and image, as the original's training")
    return p


def prepare(args: argparse.Namespace):
    """What every training command checks before the model loads: the output folder, the data and the
    settings. -> (items, validation items, loop settings, device, dtype name)."""
    check_out_dir(args.out)
    items = find_training_items(args.data, "--data", args.prompt)
    val_items = find_training_items(args.val, "--val", args.prompt) if args.val else []
    device = usable_device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    settings = loop.LoopSettings(
        steps=args.steps, lr=args.lr, batch=args.batch, grad_accum=args.grad_accum, warmup=args.warmup,
        seed=args.seed, save_every=args.save_every, val_every=args.val_every, dtype=dtype,
    )
    log.info("%d training item(s), %d validation item(s)", len(items), len(val_items))
    return items, val_items, settings, device, dtype


def load_frozen(args: argparse.Namespace, ckpt: Path, device, dtype: str):
    """The checkpoint in `dtype`, frozen, on `device`, with the training clip's encoding settings."""
    model = load_for(ckpt, COMPUTE_DTYPES[dtype]).to(device)
    height = args.height or model.config.pixel_size[0]
    width = args.width or model.config.pixel_size[1]
    pipeline.check_size(height, width, model.config, "--width x --height")
    frames = args.frames or model.config.frames
    if frames < 3:
        raise ValueError(f"--frames must be at least 3 (two keyframes and a frame between), got {frames}")
    model.unet.gradient_checkpointing = args.grad_checkpointing
    return model, EncodingSettings(height, width, args.resize, frames, dtype)


def run(args: argparse.Namespace, on_step: Optional[loop.StepHook] = None) -> int:
    """Carry out train-lora; `on_step(step, steps, loss)` as `loop.run` takes it (e.g. a host's progress bar)."""
    items, val_items, settings, device, dtype = prepare(args)
    if args.rank < 1 or not 0 <= args.dropout < 1:
        raise ValueError(f"--rank must be at least 1 and --dropout in [0, 1), got {args.rank} and {args.dropout}")
    adapters.check_installed()
    lora_settings = adapters.LoraSettings(args.rank, args.alpha, args.dropout, tuple(args.targets))
    step = StepSettings(args.batch, args.fs, args.loss, args.lpips_weight, args.cond_dropout, args.sample_steps, args.seed)
    ckpt = args.ckpt or catalog.download(catalog.DEFAULT, args.models_dir)
    model, encoding = load_frozen(args, ckpt, device, dtype)
    compute = COMPUTE_DTYPES[dtype]
    lpips = load_lpips(device) if args.loss == "kdq" and args.lpips_weight > 0 else None
    cache = args.cache or args.out / "cache"
    encodings = encode_items(model, items, encoding, ckpt, cache, device, compute)
    val_encodings = encode_items(model, val_items, encoding, ckpt, cache, device, compute)
    uncond = unconditional_context(model, device, compute) if args.cond_dropout > 0 else None
    task = LoraTask(model, items, encodings, (val_items, val_encodings), encoding, lora_settings, step, uncond, device,
                    compute, lpips)
    info = {
        "command": "train-lora",
        "data": str(args.data.resolve()),
        "val": str(args.val.resolve()) if args.val else None,
        "checkpoint": checkpoint_identity(ckpt),
        "lora": asdict(lora_settings),
        "step": asdict(step),
        "encoding": asdict(encoding),
        "grad_checkpointing": args.grad_checkpointing,
    }
    loop.run(task, settings, args.out, info, resume=args.resume, device=device, on_step=on_step)
    return 0


def train(data: Path, out: Path, on_step: Optional[loop.StepHook] = None, **options) -> int:
    """train-lora as a call, for hosts such as the ComfyUI node: `options` by the CLI's option names (ckpt=,
    steps=, lr=, rank=, alpha=, frames=, grad_checkpointing=, resume=, ...), already typed; the others keep
    the CLI's defaults."""
    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    args = parser.parse_args(["--data", str(data), "--out", str(out)])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise TypeError(f"train-lora has no option {', '.join(unknown)}: see python -m tooncrafter_core train-lora --help")
    vars(args).update(options)
    resolve_models_dir(args)
    return run(args, on_step)
