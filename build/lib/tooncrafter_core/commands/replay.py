"""Rerun a case recorded from the original ToonCrafter or DynamiCrafter code and write every stage our
core computes.

    python -m tooncrafter_core replay CASE_DIR OUT.safetensors [--dtype fp32] [--device cpu] [--compare]

From `reference.safetensors` only the inputs and random draws are read (`INPUT_KEYS`); settings
come from `reference.json` (its `mode`: interpolation by default, `i2v` for image-to-video, `interp` or
`loop`), weights from `model.safetensors`, architecture and kind from `config.yaml`. Stages are chained:
our own samples feed our own decode.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

from ..conditioning import encode_prompts, image_context, negative_image_context
from ..decoding import decode
from ..guidance import Conditioning, guided_model, sample, unet_output
from ..keyframes import clip_latents, concat_condition, encode_keyframes
from ..models.config import from_original_yaml
from ..runtime import COMPUTE_DTYPES
from ..sampling import Denoiser, ddim_plan, ddim_timesteps, ddim_update
from ..settings import SamplingConfig
from ..weights.checkpoint import load_model

log = logging.getLogger(__name__)

INPUT_KEYS = ("image_start", "image_end", "vae_noise", "unet_x", "unet_t", "x_T", "eta1_noise", "ddim_noise", "fs")
TOLERANCE = 1e-4
# Recorded modes whose concat holds a first and a last keyframe; a loop's are the same image.
KEYFRAME_MODES = ("interp", "loop")


def _keyframes(settings: dict, x: dict) -> tuple[torch.Tensor, ...]:
    start = x["image_start"][None]
    mode = settings.get("mode", "interp")
    if mode == "i2v":
        return (start,)
    if mode not in KEYFRAME_MODES:
        raise ValueError(f"reference.json: unknown mode {mode!r} (i2v, interp or loop)")
    return start, x["image_end"][None] if "image_end" in x else start


def run_case(
    case_dir: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu", ckpt: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """All stages for one recorded case, as fp32 CPU tensors under the reference's names; `ckpt`
    replaces the case's weights (e.g. a converted copy of them)."""
    case_dir = Path(case_dir)
    settings = json.loads((case_dir / "reference.json").read_text())
    reference = load_file(str(case_dir / "reference.safetensors"))
    inputs = {k: reference[k] for k in INPUT_KEYS if k in reference}
    del reference

    config = from_original_yaml(case_dir / "config.yaml")
    model = load_model(ckpt or case_dir / "model.safetensors", dtype=dtype, config=config).to(device)
    dev = torch.device(device)
    x = {k: v.to(dev, dtype) if v.is_floating_point() else v.to(dev) for k, v in inputs.items()}
    frames = settings["frames"]
    sampling = SamplingConfig(
        steps=settings["steps"],
        cfg_scale=settings["cfg_scale"],
        eta=settings["eta"],
        fs=settings["fs"],
        guidance_rescale=settings["guidance_rescale"],
        timestep_spacing=settings["timestep_spacing"],
    )
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        out["text_cond"] = encode_prompts(model.cond_stage_model, [settings["prompt"]], dev, dtype)
        out["text_uncond"] = encode_prompts(model.cond_stage_model, [""], dev, dtype)
        keyframes = _keyframes(settings, x)
        out["image_embed_raw"], out["image_cond"] = image_context(model.embedder, model.image_proj_model, keyframes[0])
        out["image_embed_raw_uncond"], out["image_uncond"] = negative_image_context(
            model.embedder.model.visual, model.image_proj_model, model.config.vision, dev, dtype
        )
        out["context_cond"] = torch.cat([out["text_cond"], out["image_cond"]], dim=1)
        out["context_uncond"] = torch.cat([out["text_uncond"], out["image_uncond"]], dim=1)

        enc = encode_keyframes(model.vae, *keyframes)
        out["vae_mean"], out["vae_logvar"] = enc.mean[0], enc.logvar[0]
        noise = rearrange(x["vae_noise"], "t c h w -> 1 c t h w")
        out["z"] = clip_latents(enc, frames, config.vae.scale_factor, noise)
        for i, ref in enumerate(enc.refs):
            out[f"ref_hidden_{i}"] = ref
        out["c_concat"] = concat_condition(out["z"], enc.task)

        fs = torch.tensor([sampling.fs], device=dev)
        unet_t = x["unet_t"].long()
        out["unet_out"] = unet_output(model.unet, x["unet_x"], unet_t, out["context_cond"], out["c_concat"], fs)
        out["unet_out_uncond"] = unet_output(model.unet, x["unet_x"], unet_t, out["context_uncond"], out["c_concat"], fs)

        cond = Conditioning(out["context_cond"], out["context_uncond"], out["c_concat"], fs)
        timesteps = ddim_timesteps(sampling.steps, sampling.timestep_spacing, model.schedule.num_timesteps)
        out["ddim_timesteps"] = torch.from_numpy(timesteps)
        plan = ddim_plan(model.schedule, sampling.steps, sampling.timestep_spacing, sampling.eta)[::-1]  # ascending t
        out["ddim_alphas"] = torch.tensor([s.alpha for s in plan])
        out["ddim_alphas_prev"] = torch.tensor([s.alpha_prev for s in plan])
        out["ddim_sigmas"] = torch.tensor([s.sigma for s in plan])
        if model.schedule.scale_arr is not None:
            scale = model.schedule.scale_arr[torch.as_tensor(timesteps)]
            out["ddim_scale_arr"] = scale
            out["ddim_scale_arr_prev"] = torch.cat([scale[:1], scale[:-1]])
        trajectory, pred_x0 = [x["x_T"]], []

        def record(i, xt, x0):
            trajectory.append(xt)
            pred_x0.append(x0)

        noises = list(x["ddim_noise"]) if "ddim_noise" in x else None
        out["samples"] = sample(model.unet, model.schedule, cond, sampling, x["x_T"], noises=noises, callback=record)
        out["ddim_trajectory"] = torch.stack(trajectory)
        out["ddim_pred_x0"] = torch.stack(pred_x0)

        eta1_plan = ddim_plan(model.schedule, sampling.steps, sampling.timestep_spacing, eta=1.0)
        step = eta1_plan[::-1][settings["eta1_step_index"]]
        denoiser = Denoiser(guided_model(model.unet, cond, sampling), model.schedule)
        t = torch.full((1,), step.t, device=dev, dtype=torch.long)
        eps, x0 = denoiser(x["x_T"], t)
        out["eta1_x_prev"], out["eta1_pred_x0"] = ddim_update(x["x_T"], eps, x0, step, x["eta1_noise"])

        out["video_first_pass"], out["video"] = decode(model.vae, out["samples"], enc.refs, second_decode=True)
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def _reference_view(name: str, ref: torch.Tensor, frames: int, keyframes: int) -> torch.Tensor:
    # The reference encodes the whole clip the keyframes are repeated into; we encode the keyframes.
    if name in ("vae_mean", "vae_logvar"):
        return ref[[0, frames - 1]] if keyframes == 2 else ref[[0]]
    return ref


def compare(ours: dict[str, torch.Tensor], case_dir: str | Path) -> dict[str, float]:
    """Relative error ||ours - ref|| / ||ref|| for every stage the reference holds (inputs excluded)."""
    case_dir = Path(case_dir)
    reference = load_file(str(case_dir / "reference.safetensors"))
    settings = json.loads((case_dir / "reference.json").read_text())
    keyframes = 1 if settings.get("mode") == "i2v" else 2
    errors = {}
    for name, ref in reference.items():
        if name in INPUT_KEYS:
            continue
        if name not in ours:
            errors[name] = float("inf")
            continue
        ref = _reference_view(name, ref.float(), settings["frames"], keyframes)
        mine = ours[name].float()
        if mine.shape != ref.shape:
            log.error("%s: shape %s, reference %s", name, tuple(mine.shape), tuple(ref.shape))
            errors[name] = float("inf")
            continue
        denom = ref.norm().item() or 1.0
        errors[name] = (mine - ref).norm().item() / denom
    return errors


def add_parser(subparsers) -> argparse.ArgumentParser:
    r = subparsers.add_parser(
        "replay",
        help="rerun a case recorded from the original code and compare every stage",
        description=__doc__.splitlines()[0],
    )
    r.add_argument("case_dir", type=Path, help="a recorded case folder (reference.json, reference.safetensors, ...)")
    r.add_argument("out", type=Path, help="where our stages are written (.safetensors)")
    r.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), default="fp32")
    r.add_argument("--device", default="cpu")
    r.add_argument("--ckpt", type=Path, help="weights to use instead of the case's (e.g. a converted copy)")
    r.add_argument("--compare", action="store_true", help=f"print each stage's relative error, fail above {TOLERANCE}")
    return r


def run(args: argparse.Namespace) -> int:
    ours = run_case(args.case_dir, COMPUTE_DTYPES[args.dtype], args.device, args.ckpt)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(ours, str(args.out))
    log.info("wrote %d stages to %s", len(ours), args.out)
    if not args.compare:
        return 0
    errors = compare(ours, args.case_dir)
    worst = 0.0
    for name, err in errors.items():
        flag = "" if err <= TOLERANCE else "  <-- above tolerance"
        log.info("%-18s %.3e%s", name, err, flag)
        worst = max(worst, err)
    nonfinite = [k for k, v in ours.items() if not torch.isfinite(v).all()]
    if nonfinite:
        log.error("non-finite values in: %s", ", ".join(nonfinite))
    ok = worst <= TOLERANCE and not nonfinite
    log.info("%s: worst relative error %.3e (tolerance %.0e)", "PASS" if ok else "FAIL", worst, TOLERANCE)
    return 0 if ok else 1
