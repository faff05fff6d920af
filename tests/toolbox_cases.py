"""ComfyUI's nodes that take a MODEL and give one back, on the ToonCrafter MODEL: what each one does
here, the setting under which it must matter, and why a refused one is refused. The compatibility
test runs every entry (`test_comfy_toolbox.py`) and docs/native-model.md shows this table."""

from __future__ import annotations

from dataclasses import dataclass, field

APPLIES, REFUSED, NOT_APPLICABLE = "applies", "refused", "not applicable"


@dataclass(frozen=True)
class Case:
    kind: str
    note: str
    settings: dict = field(default_factory=dict)  # inputs besides the model, over the node's defaults
    needs: tuple[str, ...] = ()  # inputs the test driver builds (see toolbox_driver.PROVIDERS)
    message: str = ""  # a refusal's message contains this
    sampler: dict = field(default_factory=dict)  # KSampler settings over the driver's defaults


_MERGE = ("model2",)
_FAMILY_MERGE = (
    "every ToonCrafter weight at the first slider's ratio (ComfyUI's rule for weights its sliders do not "
    "name: none of this family's blocks exist in ToonCrafter); ModelMergeSD2 or ModelMergeBlocks merge per block"
)
_SAMPLING = "ModelSampling"
_SAMPLING_NOTE = "would replace the original's noise process (v, zero terminal SNR, dynamic rescale)"


def _family_merge(first: str) -> Case:
    return Case(APPLIES, _FAMILY_MERGE, {first: 0.5}, _MERGE)


CASES: dict[str, Case] = {
    "APG": Case(APPLIES, "projects the guidance of each clip (5-D, per batch entry)", {"eta": 0.0}),
    "CFGNorm": Case(APPLIES, "normalises the guided prediction per clip", {"strength": 1.0}),
    "CFGZeroStar": Case(APPLIES, "its optimised guidance scale per clip"),
    "ChromaRadianceOptions": Case(
        REFUSED, "options of Chroma Radiance's decoder (with its default, no options, it returns the model as it is)",
        {"nerf_tile_size": 16}, message="Chroma Radiance",
    ),
    "ContextWindowsManual": Case(
        APPLIES, "dim 2 (the frames); the UNet samples overlapping windows (see Context windows below); other dims are refused",
        {"context_length": 2, "context_overlap": 1, "dim": 2},
    ),
    "DifferentialDiffusion": Case(APPLIES, "with a noise_mask on the latent (SetLatentNoiseMask)", {"strength": 1.0}, ("mask",)),
    "EasyCache": Case(
        APPLIES, "skips UNet passes (it sees the noisy latent without the keyframe channels); see Step caches below",
        {"reuse_threshold": 1.0, "start_percent": 0.0, "end_percent": 1.0}, sampler={"steps": 10},
    ),
    "Epsilon Scaling": Case(APPLIES, "scales the predicted noise per clip", {"scaling_factor": 1.5}),
    "FreSca": Case(APPLIES, "filters each frame's latent (FFT over height and width)", {"scale_high": 2.0, "freq_cutoff": 1}),
    "FreeU": Case(APPLIES, "on the output blocks of model_channels x2 and x4 (frames in the batch); equals the formula", {"b2": 1.5, "s2": 0.5}),
    "FreeU_V2": Case(APPLIES, "as FreeU; equals the formula", {"b2": 1.5, "s2": 0.5}),
    "HyperTile": Case(APPLIES, "tiles each frame's self-attention queries", {"tile_size": 32, "swap_size": 1}),
    "HypernetworkLoader": Case(
        APPLIES, "on the spatial attention's keys and values of the widths it has layers for", needs=("hypernetwork",)
    ),
    "LatentApplyOperationCFG": Case(
        APPLIES, "its operation sees the frames as a batch of images", needs=("operation",)
    ),
    "LazyCache": Case(
        APPLIES, "skips UNet passes for the whole guided prediction",
        {"reuse_threshold": 1.0, "start_percent": 0.0, "end_percent": 1.0}, sampler={"steps": 10},
    ),
    "LoraLoader": Case(APPLIES, "kohya / PEFT / ComfyUI-named ToonCrafter LoRAs; CLIP passes through", needs=("lora", "clip")),
    "LoraLoaderModelOnly": Case(APPLIES, "as LoraLoader", needs=("lora",)),
    "LoraModelLoader": Case(APPLIES, "a LORA_MODEL (state dict) of ToonCrafter LoRA keys", needs=("lora_model",)),
    "Mahiro": Case(APPLIES, "its guidance per clip"),
    "ModelComputeDtype": Case(APPLIES, "the UNet computes in the chosen dtype", {"dtype": "bf16"}),
    "ModelMergeAdd": Case(APPLIES, "ToonCrafter models only: another family's weights are refused by shape", needs=_MERGE),
    "ModelMergeAuraflow": _family_merge("init_x_linear."),
    "ModelMergeBlocks": Case(APPLIES, "input / middle / output blocks", {"input": 0.5}, _MERGE),
    "ModelMergeCosmos14B": _family_merge("pos_embedder."),
    "ModelMergeCosmos7B": _family_merge("pos_embedder."),
    "ModelMergeCosmosPredict2_14B": _family_merge("pos_embedder."),
    "ModelMergeCosmosPredict2_2B": _family_merge("pos_embedder."),
    "ModelMergeFlux1": _family_merge("img_in."),
    "ModelMergeLTXV": _family_merge("patchify_proj."),
    "ModelMergeMochiPreview": _family_merge("pos_frequencies."),
    "ModelMergeQwenImage": _family_merge("pos_embeds."),
    "ModelMergeSD1": Case(APPLIES, "SD's block names are ToonCrafter's (middle_block.3, the second ResBlock, takes the first slider)", {"input_blocks.1.": 0.5}, _MERGE),
    "ModelMergeSD2": Case(APPLIES, "as ModelMergeSD1", {"input_blocks.1.": 0.5}, _MERGE),
    "ModelMergeSD35_Large": _family_merge("pos_embed."),
    "ModelMergeSD3_2B": _family_merge("pos_embed."),
    "ModelMergeSDXL": Case(APPLIES, "by SDXL's block prefixes (input_blocks.1 also matches input_blocks.10, 11)", {"input_blocks.1": 0.5}, _MERGE),
    "ModelMergeSimple": Case(APPLIES, "ToonCrafter models only", {"ratio": 0.5}, _MERGE),
    "ModelMergeSubtract": Case(APPLIES, "ToonCrafter models only", {"multiplier": 0.5}, _MERGE),
    "ModelMergeWAN2_1": _family_merge("patch_embedding."),
    "ModelSamplingAuraFlow": Case(REFUSED, _SAMPLING_NOTE, message=_SAMPLING),
    "ModelSamplingContinuousEDM": Case(REFUSED, _SAMPLING_NOTE, message=_SAMPLING),
    "ModelSamplingContinuousV": Case(REFUSED, _SAMPLING_NOTE, message=_SAMPLING),
    "ModelSamplingDiscrete": Case(REFUSED, _SAMPLING_NOTE + "; v_prediction + zsnr is still another schedule", {"sampling": "v_prediction", "zsnr": True}, message=_SAMPLING),
    "ModelSamplingFlux": Case(REFUSED, _SAMPLING_NOTE, message=_SAMPLING),
    "ModelSamplingLTXV": Case(REFUSED, _SAMPLING_NOTE, needs=("latent",), message=_SAMPLING),
    "ModelSamplingSD3": Case(REFUSED, _SAMPLING_NOTE, message=_SAMPLING),
    "ModelSamplingStableCascade": Case(REFUSED, _SAMPLING_NOTE, message=_SAMPLING),
    "PatchModelAddDownscale": Case(
        APPLIES, "input block N's output downscaled (each frame), upscaled back before the output blocks",
        {"block_number": 1, "end_percent": 0.7},
    ),
    "PerpNeg": Case(APPLIES, "empty_conditioning from ToonCrafter Conditioning (it needs the keyframes)", needs=("empty_conditioning",)),
    "PerturbedAttentionGuidance": Case(APPLIES, "perturbs the middle block's spatial self-attention", {"scale": 3.0}),
    "QwenImageDiffsynthControlnet": Case(
        REFUSED, "patches Qwen-Image's double blocks; ToonCrafter takes SD 2.x ControlNets (ControlNetApplyAdvanced)",
        needs=("model_patch", "vae", "image"), message="double_block",
    ),
    "RenormCFG": Case(APPLIES, "caps the guided prediction's norm per clip", {"renorm_cfg": 0.5}),
    "RescaleCFG": Case(APPLIES, "rescales x0 predictions of a plain VP model (9 % from the original's rescale; use ToonCrafter Guidance Rescale)"),
    "SelfAttentionGuidance": Case(APPLIES, "blurs each frame where the middle block's self-attention looks (frames as a batch of images, one clip at a time)", {"scale": 1.0}),
    "SkipLayerGuidanceDiT": Case(REFUSED, "skips DiT layers; PerturbedAttentionGuidance is the UNet's layer guidance", message="DiT layers"),
    "SkipLayerGuidanceDiTSimple": Case(REFUSED, "as SkipLayerGuidanceDiT", message="DiT layers"),
    "SkipLayerGuidanceSD3": Case(REFUSED, "as SkipLayerGuidanceDiT", message="DiT layers"),
    "TCFG": Case(APPLIES, "its tangential damping per clip"),
    "TomePatchModel": Case(APPLIES, "merges each frame's tokens in the full-resolution self-attention", {"ratio": 0.5}),
    "TorchCompileModel": Case(APPLIES, "compiles the core UNet (see torch.compile below)", {"backend": "eager"}),
    "TrainLoraNode": Case(
        REFUSED, "trains with ComfyUI's objective on clip latents that no node can make; ToonCrafter Train LoRA trains on clips",
        needs=("latents", "positive"), message="ToonCrafter Train LoRA",
    ),
    "UNetCrossAttentionMultiply": Case(
        APPLIES, "every attn2 by name, as for SVD: the spatial cross-attention and the temporal layers' second "
        "self-attention; equals scaled weights", {"out": 0.5},
    ),
    "UNetSelfAttentionMultiply": Case(APPLIES, "every attn1 by name (spatial and temporal); equals scaled weights", {"out": 0.5}),
    "UNetTemporalAttentionMultiply": Case(
        APPLIES, "temporal sliders scale the temporal transformers (named time_stack, as SVD's); structural ones the spatial; equals scaled weights",
        {"self_temporal": 0.5},
    ),
    "USOStyleReference": Case(REFUSED, "patches Flux's input (USO)", needs=("model_patch", "clip_vision_output"), message="post_input"),
    "VideoLinearCFGGuidance": Case(APPLIES, "cfg ramps over the frames (frames as a batch, as for SVD)", {"min_cfg": 1.0}),
    "VideoTriangleCFGGuidance": Case(APPLIES, "as VideoLinearCFGGuidance", {"min_cfg": 1.0}),
    "WanContextWindowsManual": Case(
        APPLIES, "windows over the frames; its lengths are Wan's pixel frames (/4): ContextWindowsManual takes ToonCrafter's frames",
        {"context_length": 5, "context_overlap": 1},
    ),
    "ToonCrafterGuidanceRescale": Case(APPLIES, "the original's guidance rescale", {"multiplier": 0.7}),
}


def markdown_table() -> str:
    """The table docs/native-model.md shows (a test keeps the two equal)."""
    rows = ["| node | on ToonCrafter | what it does here, or why not |", "|---|---|---|"]
    for name in sorted(CASES, key=str.lower):
        case = CASES[name]
        rows.append(f"| `{name}` | {case.kind} | {case.note} |")
    return "\n".join(rows)
