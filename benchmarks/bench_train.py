"""Memory and time of one LoRA training step on the full-size UNet (random weights), with and without
gradient checkpointing.

    python3 benchmarks/bench_train.py --device cpu --sizes 32x32 64x64 --json results/train_memory_cpu.json
    python3 benchmarks/bench_train.py --device cuda --sizes 320x512 --json results/<card>_train_step.json

On the CPU it counts what a step keeps for the backward pass (every tensor saved by autograd, each
storage once) at small sizes and extrapolates to 320x512: the activations grow with the number of
latent pixels (the attention here is SDPA, whose memory-efficient kernels keep no attention matrix
on a GPU). With checkpointing a step keeps the blocks' inputs plus, while one block is recomputed, that
block's activations. The estimated peak adds the UNet's weights, the LoRA weights, their gradients and
AdamW's two moments. On CUDA it measures the step's peak allocation and its time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_interpolate import init_random_  # noqa: E402

from tooncrafter_core.models.config import ModelConfig  # noqa: E402
from tooncrafter_core.models.unet import UNetModel  # noqa: E402
from tooncrafter_core.runtime import COMPUTE_DTYPES  # noqa: E402
from tooncrafter_core.training.adapters import LoraSettings, add_lora, lora_parameters  # noqa: E402

log = logging.getLogger("bench_train")
GIB = 2**30
FULL = (320, 512)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), default="bf16")
    p.add_argument("--sizes", nargs="+", default=["32x32", "64x64"], help="HxW pixel sizes of the measured steps")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--tiny", action="store_true", help="a tiny UNet instead of the released one (smoke test)")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def build(args) -> UNetModel:
    config = ModelConfig().unet
    if args.tiny:
        from dataclasses import replace

        config = replace(config, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2, 1),
                         num_head_channels=16, context_dim=64)
    with torch.device("meta"):
        unet = UNetModel(config)
    unet.to_empty(device=args.device)
    with torch.no_grad():
        init_random_(unet, 0, 0.02, torch.device(args.device))
    unet.to(COMPUTE_DTYPES[args.dtype])
    add_lora(unet, LoraSettings(rank=args.rank, alpha=args.rank))
    return unet.train()


def inputs(unet: UNetModel, h: int, w: int, frames: int, device, dtype):
    cfg = unet.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, frames, h // 8, w // 8, generator=g)
    ctx = torch.randn(1, cfg.text_tokens + frames * cfg.image_tokens_per_frame, cfg.context_dim, generator=g)
    return x.to(device, dtype), torch.tensor([500], device=device), ctx.to(device, dtype), torch.tensor([10], device=device)


def saved_bytes(unet: UNetModel, args_in) -> tuple[int, int]:
    """(bytes autograd keeps for the backward pass, the most one top-level block keeps)."""
    # Weights are saved for the input gradients too; they are counted once, as weights.
    seen: dict[int, int] = {p.untyped_storage().data_ptr(): 0 for p in unet.parameters()}
    per_block: dict[str, int] = {}
    current = ["-"]

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen[ptr] = t.untyped_storage().nbytes()
            per_block[current[0]] = per_block.get(current[0], 0) + seen[ptr]
        return t

    hooks = []
    for name in ("input_blocks", "middle_block", "output_blocks"):
        blocks = getattr(unet, name)
        for i, block in enumerate(blocks if isinstance(blocks, torch.nn.ModuleList) else [blocks]):
            label = f"{name}.{i}"
            hooks.append(block.register_forward_pre_hook(lambda m, a, label=label: current.__setitem__(0, label)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(*args_in).float().square().mean()
    for hook in hooks:
        hook.remove()
    return sum(seen.values()), max(per_block.values(), default=0)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, dtype = torch.device(args.device), COMPUTE_DTYPES[args.dtype]
    unet = build(args)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    lora = sum(p.numel() for p in lora_parameters(unet).values())
    # LoRA weights, their gradients and AdamW's two moments, all fp32.
    trainable = 4 * 4 * lora
    report = {"device": str(device), "dtype": args.dtype, "frames": args.frames, "rank": args.rank,
              "unet_weights_gib": weights / GIB, "lora_parameters": lora, "lora_training_state_gib": trainable / GIB,
              "runs": {}}
    for size in args.sizes:
        h, w = (int(n) for n in size.split("x"))
        x = inputs(unet, h, w, args.frames, device, dtype)
        for ckpt in (False, True):
            unet.gradient_checkpointing = ckpt
            key = f"{size}{'_checkpointing' if ckpt else ''}"
            saved, block = saved_bytes(unet, x)
            entry = {"saved_gib": saved / GIB, "largest_block_gib": block / GIB}
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                began = time.perf_counter()
                for _ in range(2):
                    unet(*x).float().square().mean().backward()
                    unet.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                entry.update(seconds_per_step=(time.perf_counter() - began) / 2,
                             peak_gib=torch.cuda.max_memory_allocated() / GIB)
            report["runs"][key] = entry
            log.info("%-26s saved %.3f GiB, largest block %.3f GiB%s", key, saved / GIB, block / GIB,
                     f", peak {entry['peak_gib']:.2f} GiB, {entry['seconds_per_step']:.2f} s/step" if "peak_gib" in entry else "")
    unet.gradient_checkpointing = False
    if len(args.sizes) >= 2 and device.type == "cpu":
        report["estimate_320x512"] = estimate(report, args)
        log.info("estimated peak of a 320x512 step: %s", json.dumps(report["estimate_320x512"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def estimate(report: dict, args) -> dict:
    """Each measured quantity on a line through the two smallest sizes (per latent pixel), taken to
    320x512, plus the weights and the training state."""
    s1, s2 = args.sizes[:2]
    area = lambda s: (int(s.split("x")[0]) // 8) * (int(s.split("x")[1]) // 8)  # noqa: E731
    full = (FULL[0] // 8) * (FULL[1] // 8)
    runs = report["runs"]

    def at_full(key: str, field: str) -> float:
        v1, v2 = runs[s1 + key][field], runs[s2 + key][field]
        return v1 + (v2 - v1) / (area(s2) - area(s1)) * (full - area(s1))

    base = report["unet_weights_gib"] + report["lora_training_state_gib"]
    plain = at_full("", "saved_gib")
    checkpointed = at_full("_checkpointing", "saved_gib") + at_full("", "largest_block_gib")
    return {"without_checkpointing_gib": round(base + plain, 2), "with_checkpointing_gib": round(base + checkpointed, 2),
            "activations_without_gib": round(plain, 2), "activations_with_gib": round(checkpointed, 2)}


if __name__ == "__main__":
    sys.exit(main())
