"""`python -m tooncrafter_core distill --teacher CKPT [--teacher-lora DIR:S] --student-config YAML --data DIR --out DIR`:
a smaller UNet trained to predict what the teacher predicts, saved as a checkpoint the loader reads."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path

from ..models.config import from_original_yaml
from ..runtime import COMPUTE_DTYPES
from ..training import loop
from ..training.distill import REGIMES, DistillTask, DistillWeights, build_student, student_config
from ..training.encodings import checkpoint_identity, encode_items
from ..training.objective import load_lpips
from ..weights import catalog, lora
from ..weights.lora import parse_spec
from .train_lora import add_training_arguments, load_frozen, prepare

log = logging.getLogger(__name__)

STUDENT_FILE = "student.safetensors"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "distill",
        help="distil the model into a smaller student UNet",
        description="Train a student UNet (any narrower or shallower configuration: --student-config, an original-format "
        "yaml that differs from the teacher's in the UNet only) on the teacher's predictions for clips of --data. "
        "From a plain teacher the losses are L1 + LPIPS of the decoded x0 predictions; from a LoRA teacher "
        "(--teacher-lora) also a latent SmoothL1 and an MSE on the predicted noise (weights 1.0 / 0.5 / 0.5 / 0.25). "
        "The student is written as OUT/student.safetensors (+ student.yaml), a checkpoint the CLI and ComfyUI load.",
    )
    p.add_argument("--teacher", type=Path, help="the teacher checkpoint; omitted: download the default release")
    p.add_argument("--teacher-lora", type=parse_spec, action="append", default=[], metavar="PATH[:STRENGTH]",
                   help="a LoRA merged into the teacher (repeatable); it switches to the LoRA-teacher losses")
    p.add_argument("--student-config", type=Path, required=True, help="original-format yaml of the student model")
    add_training_arguments(p)
    p.add_argument("--regime", choices=REGIMES, help="which losses (default: image without a teacher LoRA, all four with one)")
    p.add_argument("--w-l1", type=float, default=DistillWeights.l1, help="weight of the image L1 loss")
    p.add_argument("--w-lpips", type=float, default=DistillWeights.lpips,
                   help="weight of the image LPIPS loss (needs the eval extra; 0 to train without it)")
    p.add_argument("--w-latent", type=float, default=DistillWeights.latent, help="weight of the latent SmoothL1 loss")
    p.add_argument("--w-noise", type=float, default=DistillWeights.noise, help="weight of the noise MSE loss")
    return p


def run(args: argparse.Namespace) -> int:
    items, val_items, settings, device, dtype = prepare(args)
    if not args.student_config.is_file():
        raise ValueError(f"--student-config {args.student_config} not found: give an original-format yaml of the student")
    student_model_config = from_original_yaml(args.student_config)
    regime = args.regime or ("image+latent+noise" if args.teacher_lora else "image")
    weights = DistillWeights(args.w_l1, args.w_lpips, args.w_latent, args.w_noise)
    teacher_file = args.teacher or catalog.download(catalog.DEFAULT, args.models_dir)
    teacher, encoding = load_frozen(args, teacher_file, device, dtype)
    config = student_config(teacher.config, student_model_config)
    lora.merge_specs(teacher, args.teacher_lora)
    compute = COMPUTE_DTYPES[dtype]
    lpips = load_lpips(device) if weights.lpips > 0 else None
    cache = args.cache or args.out / "cache"
    encodings = encode_items(teacher, items, encoding, teacher_file, cache, device, compute)
    val_encodings = encode_items(teacher, val_items, encoding, teacher_file, cache, device, compute)
    student = build_student(config, teacher.unet, args.seed)
    student.gradient_checkpointing = args.grad_checkpointing
    task = DistillTask(teacher, student, items, encodings, (val_items, val_encodings), encoding, weights, regime,
                       args.batch, args.fs, device, compute, lpips, args.seed, args.sample_steps)
    info = {
        "command": "distill",
        "data": str(args.data.resolve()),
        "val": str(args.val.resolve()) if args.val else None,
        "teacher": checkpoint_identity(teacher_file),
        "teacher_lora": [f"{s.path.resolve()}:{s.strength:g}" for s in args.teacher_lora],
        "student_config": str(args.student_config.resolve()),
        "regime": regime,
        "weights": asdict(weights),
        "encoding": asdict(encoding),
        "grad_checkpointing": args.grad_checkpointing,
    }
    loop.run(task, settings, args.out, info, resume=args.resume, device=device)
    path = task.export(args.out / STUDENT_FILE, args.student_config)
    teacher_params = sum(p.numel() for p in teacher.unet.parameters())
    student_params = sum(p.numel() for p in student.parameters())
    log.info("student: %s, UNet %d parameters (teacher %d, %.1f%%)", path, student_params, teacher_params,
             100 * student_params / teacher_params)
    return 0
