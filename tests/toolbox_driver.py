"""Runs ComfyUI's MODEL -> MODEL nodes on the tiny ToonCrafter MODEL inside a ComfyUI process (after
comfy_harness.IN_PROCESS_PRELUDE): each node with its `toolbox_cases` setting, then the stock KSampler;
the latents against the unpatched model's, and references where a node has a formula to check."""

from __future__ import annotations

import types

import torch

SEED = 21
BASE_SAMPLING = {"steps": 3, "cfg": 7.5, "sampler_name": "euler", "scheduler": "simple"}


def node_class(name: str):
    from tc_pack.nodes import NODES

    import nodes

    ours = {cls.define_schema().node_id: cls for cls in NODES}
    return ours[name] if name in ours else nodes.NODE_CLASS_MAPPINGS[name]


def run_node(name: str, **inputs):
    """A node's outputs (a tuple) for these inputs over its defaults, V1 or V3."""
    from comfy_api.latest import io

    cls = node_class(name)
    full = {**defaults(cls), **inputs}
    if isinstance(cls, type) and issubclass(cls, io.ComfyNode):
        out = cls.execute(**full)
        return tuple(out.result if isinstance(out, io.NodeOutput) else out)
    return getattr(cls(), cls.FUNCTION)(**full)


def defaults(cls) -> dict:
    out = {}
    spec = cls.INPUT_TYPES()
    for name, entry in spec.get("required", {}).items():
        kind = entry[0]
        options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
        if isinstance(kind, list):
            out[name] = options.get("default", kind[0])
        elif "default" in options:
            out[name] = options["default"]
        elif kind == "COMBO" and options.get("options"):
            out[name] = options["options"][0]
    return out


def model_input_name(cls) -> str:
    return "model1" if "model1" in cls.INPUT_TYPES()["required"] else "model"


class Fixture:
    """The tiny model's conditioning and the inputs nodes need, built once."""

    def __init__(self, handle, folder, tests_dir):
        import folder_paths
        from helpers import TINY_KOHYA_LORA, tiny_kohya_lora
        from tc_pack.nodes.conditioning import ToonCrafterConditioning
        from tc_pack.nodes.loader import LoadToonCrafterModel

        self.handle = handle
        self.folder = folder
        g = torch.Generator().manual_seed(0)
        start, end = torch.rand(1, 64, 64, 3, generator=g), torch.rand(1, 64, 64, 3, generator=g)
        self.start, self.end = start, end
        self.pos, self.neg, self.lat = ToonCrafterConditioning.execute(
            handle, start, end, "a ball", "", 10, 64, 64, "crop", 0
        ).result
        loras = folder / "loras"
        tiny_kohya_lora(loras / TINY_KOHYA_LORA)
        folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
        self.lora_name = TINY_KOHYA_LORA
        self.lora_path = loras / TINY_KOHYA_LORA
        hyper = folder / "hypernetworks"
        hyper.mkdir(exist_ok=True)
        torch.save(hypernetwork_state(handle), hyper / "tiny_hyper.pt")
        folder_paths.add_model_folder_path("hypernetworks", str(hyper), is_default=True)
        _, _, self.clip = LoadToonCrafterModel.execute("tiny.safetensors", "auto").result
        self.passes = 0
        self._bases = {}
        handle.unet.model.diffusion_model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.passes += 1

    def sample(self, model, latent=None, positive=None, negative=None, **sampling):
        import nodes as comfy_nodes

        s = {**BASE_SAMPLING, **sampling}
        latent = self.lat if latent is None else latent
        self.passes = 0
        (out,) = comfy_nodes.KSampler().sample(
            model, SEED, s["steps"], s["cfg"], s["sampler_name"], s["scheduler"],
            positive or self.pos, negative or self.neg, latent,
        )
        return out["samples"]

    def base(self, latent, masked: bool, sampling: dict):
        """The unpatched model's latents and UNet passes for these sampling settings (kept)."""
        key = (masked, tuple(sorted(sampling.items())))
        if key not in self._bases:
            samples = self.sample(self.handle.unet, latent=latent, **sampling)
            self._bases[key] = (samples, self.passes)
        return self._bases[key]

    def provide(self, need: str) -> dict:
        """Inputs for one of a case's needs (the node's own input names)."""
        from safetensors.torch import load_file

        if need == "model2":
            (model2,) = run_node("LoraLoaderModelOnly", model=self.handle.unet, lora_name=self.lora_name, strength_model=1.0)
            return {"model2": model2}
        if need == "lora":
            return {"lora_name": self.lora_name, "strength_model": 1.0}
        if need == "clip":
            return {"clip": self.clip, "strength_clip": 1.0}
        if need == "lora_model":
            prefix = "diffusion_model."
            state = load_file(str(self.lora_path))
            return {"lora": {k: v for k, v in state.items()}, "strength_model": 1.0, "_prefix": prefix}
        if need == "hypernetwork":
            return {"hypernetwork_name": "tiny_hyper.pt", "strength": 1.0}
        if need == "operation":
            (op,) = run_node("LatentOperationSharpen", sharpen_radius=1, sigma=1.0, alpha=2.0)
            return {"operation": op}
        if need == "empty_conditioning":
            return {"empty_conditioning": self.neg, "neg_scale": 1.0}
        if need == "latent":
            return {"latent": self.lat}
        if need == "latents":
            g = torch.Generator().manual_seed(1)
            return {"latents": {"samples": torch.randn(self.lat["samples"].shape, generator=g)}, "steps": 1}
        if need == "positive":
            return {"positive": self.pos}
        if need == "mask":
            return {}
        # Stand-ins for another family's files (a Flux USO projector, a Qwen-Image ControlNet, their VAE):
        # the nodes only store them before sampling, where ToonCrafter refuses their patch.
        if need == "model_patch":
            inner = types.SimpleNamespace(process_input_latent_image=lambda x: x, additional_in_dim=0)
            return {"model_patch": types.SimpleNamespace(model=inner)}
        if need == "vae":
            return {"vae": types.SimpleNamespace(encode=lambda image: torch.zeros(1, 16, 8, 8))}
        if need == "image":
            return {"image": torch.zeros(1, 64, 64, 3)}
        if need == "clip_vision_output":
            hidden = torch.zeros(1, 24, 4, 8)
            return {"clip_vision_output": types.SimpleNamespace(all_hidden_states=hidden, penultimate_hidden_states=hidden[:, -2])}
        raise KeyError(need)

    def masked_latent(self):
        y = torch.linspace(0, 1, 64)
        mask = y[None, :, None].expand(1, 64, 64).contiguous()
        (latent,) = run_node("SetLatentNoiseMask", samples=self.lat, mask=mask)
        return latent


def hypernetwork_state(handle) -> dict:
    """A random hypernetwork (ComfyUI's format) for the widths the tiny UNet's spatial attention has."""
    cfg = handle.config.unet
    g = torch.Generator().manual_seed(3)
    widths = {cfg.model_channels * m for m in cfg.channel_mult} | {cfg.context_dim}

    def mlp(d):
        return {
            "linear.0.weight": torch.randn(2 * d, d, generator=g) * 0.2, "linear.0.bias": torch.zeros(2 * d),
            "linear.1.weight": torch.randn(d, 2 * d, generator=g) * 0.2, "linear.1.bias": torch.zeros(d),
        }

    state = {d: [mlp(d), mlp(d)] for d in sorted(widths)}
    state.update(activation_func="relu", is_layer_norm=False, use_dropout=False)
    return state


def relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def run_case(fx: Fixture, name: str, case) -> dict:
    from comfy_api.latest import io  # noqa: F401  (V3 classes are io.ComfyNode)

    cls = node_class(name)
    inputs = dict(case.settings)
    for need in case.needs:
        inputs.update(fx.provide(need))
    inputs.pop("_prefix", None)
    latent = fx.masked_latent() if "mask" in case.needs else None
    from torch._dynamo.utils import counters

    try:
        outputs = run_node(name, **{model_input_name(cls): fx.handle.unet}, **inputs)
        base, base_passes = fx.base(latent, "mask" in case.needs, case.sampler)
        graphs = counters["stats"]["unique_graphs"]
        samples = fx.sample(outputs[0], latent=latent, **case.sampler)
    except Exception as e:  # the test reports each node's outcome
        return {"error": type(e).__name__, "message": str(e)}
    return {
        "rel": relative(samples, base), "finite": bool(torch.isfinite(samples).all()),
        "passes": fx.passes, "base_passes": base_passes, "compiled_graphs": counters["stats"]["unique_graphs"] - graphs,
        "graph_breaks": sum(counters["graph_break"].values()),
    }


# ---------------------------------------------------------------------------------------------
# References and the measurements beside the matrix


def _fourier(x, threshold: int, scale: float):
    """FreeU's skip filter (Si et al. 2023, Alg. 1): the centred low frequencies of each channel scaled."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones_like(freq.real)
    mask[..., h // 2 - threshold : h // 2 + threshold, w // 2 - threshold : w // 2 + threshold] = scale
    return torch.fft.ifftn(torch.fft.ifftshift(freq * mask, dim=(-2, -1)), dim=(-2, -1)).real.to(x.dtype)


def freeu_reference(fx: Fixture, v2: bool, b1: float, b2: float, s1: float, s2: float):
    """The base model sampled with FreeU's formula applied by PyTorch hooks on the UNet's own output
    blocks (their input is [h, skip] along the channels): independent of ComfyUI's patch plumbing."""
    unet = fx.handle.unet.model.diffusion_model
    mc = unet.config.model_channels
    scales = {4 * mc: (b1, s1), 2 * mc: (b2, s2)}
    skips = []

    def reset(module, args):
        skips.clear()

    def keep(module, args, out):
        skips.append(out.shape[1])

    def freeu(module, args):
        x = args[0]
        skip_channels = skips.pop()
        h, skip = x[:, :-skip_channels].clone(), x[:, -skip_channels:]
        if h.shape[1] not in scales:
            return None
        b, s = scales[h.shape[1]]
        half = h.shape[1] // 2
        if v2:
            mean = h.mean(1, keepdim=True)
            lo = mean.flatten(1).min(-1).values[:, None, None, None]
            hi = mean.flatten(1).max(-1).values[:, None, None, None]
            h[:, :half] = h[:, :half] * ((b - 1) * (mean - lo) / (hi - lo) + 1)
        else:
            h[:, :half] = h[:, :half] * b
        return (torch.cat([h, _fourier(skip, 1, s)], dim=1), *args[1:])

    handles = [unet.register_forward_pre_hook(reset)]
    handles += [block.register_forward_hook(keep) for block in unet.input_blocks]
    handles += [block.register_forward_pre_hook(freeu) for block in unet.output_blocks]
    try:
        return fx.sample(fx.handle.unet)
    finally:
        for h in handles:
            h.remove()


def scaled_weights_reference(fx: Fixture, modules, factor: float):
    """The base model sampled with the to_out.0 weight and bias of `modules` (attention layers) scaled by hand."""
    import comfy.model_management as mm

    mm.unload_all_models()
    originals = [(m.to_out[0], m.to_out[0].weight.data.clone(), m.to_out[0].bias.data.clone()) for m in modules]
    try:
        for layer, _, _ in originals:
            layer.weight.data.mul_(factor)
            layer.bias.data.mul_(factor)
        return fx.sample(fx.handle.unet)
    finally:
        for layer, weight, bias in originals:
            layer.weight.data.copy_(weight)
            layer.bias.data.copy_(bias)
        mm.unload_all_models()


def attention_layers(fx: Fixture, which: str, spatial: bool, temporal: bool) -> list:
    from tc_pack.tooncrafter_core.models.attention import SpatialTransformer, TemporalTransformer

    kinds = tuple(k for k, wanted in ((SpatialTransformer, spatial), (TemporalTransformer, temporal)) if wanted)
    unet = fx.handle.unet.model.diffusion_model
    return [getattr(block, which) for m in unet.modules() if isinstance(m, kinds) for block in m.transformer_blocks]


def references(fx: Fixture, cases) -> dict:
    out = {}
    for name, v2 in (("FreeU", False), ("FreeU_V2", True)):
        s = {**defaults(node_class(name)), **cases[name].settings}
        ref = freeu_reference(fx, v2, s["b1"], s["b2"], s["s1"], s["s2"])
        (model,) = run_node(name, model=fx.handle.unet, **cases[name].settings)
        out[name] = relative(fx.sample(model), ref)
    for name, which, spatial, temporal, setting in (
        ("UNetSelfAttentionMultiply", "attn1", True, True, "out"),
        ("UNetCrossAttentionMultiply", "attn2", True, True, "out"),
        ("UNetTemporalAttentionMultiply", "attn1", False, True, "self_temporal"),
    ):
        factor = cases[name].settings[setting]
        ref = scaled_weights_reference(fx, attention_layers(fx, which, spatial, temporal), factor)
        (model,) = run_node(name, model=fx.handle.unet, **cases[name].settings)
        out[name] = relative(fx.sample(model), ref)
    return out


def context_windows(fx: Fixture, handle) -> dict:
    """A clip of twice the fixture's frames sampled in overlapping windows of the fixture's length."""
    from tc_pack.nodes.conditioning import ToonCrafterConditioning

    frames = handle.config.frames
    pos, neg, lat = ToonCrafterConditioning.execute(handle, fx.start, fx.end, "a ball", "", 10, 64, 64, "crop", 2 * frames).result
    seen = []
    hook = handle.unet.model.diffusion_model.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[2]))
    try:
        full = fx.sample(handle.unet, latent=lat, positive=pos, negative=neg)
        full_frames = list(seen)
        seen.clear()
        (windowed_model,) = run_node("ContextWindowsManual", model=handle.unet, context_length=frames,
                                     context_overlap=frames // 2, dim=2)
        windowed = fx.sample(windowed_model, latent=lat, positive=pos, negative=neg)
        window_frames = list(seen)
    finally:
        hook.remove()
    # Sketch guidance under the same windows: the sketch encoder sees each window's frames.
    import folder_paths
    from helpers import TINY_SKETCH_ENCODER, tiny_sketch_encoder
    from tc_pack.nodes.sketch import LoadToonCrafterSketchEncoder, ToonCrafterApplySketch

    controlnets = fx.folder / "controlnet"
    tiny_sketch_encoder(controlnets / TINY_SKETCH_ENCODER)
    folder_paths.add_model_folder_path("controlnet", str(controlnets), is_default=True)
    (encoder,) = LoadToonCrafterSketchEncoder.execute(TINY_SKETCH_ENCODER).result
    drawn = torch.ones(1, 64, 64, 3)
    drawn[:, 20:24] = 0.0  # one horizontal line on frame 5
    spos, sneg = ToonCrafterApplySketch.execute(pos, neg, lat, encoder, drawn, str(frames + 1), 1.0, "crop").result
    sketch_frames = []
    hook = encoder.model.register_forward_pre_hook(lambda m, args: sketch_frames.append(args[0].shape[2]))
    try:
        sketched = fx.sample(windowed_model, latent=lat, positive=spos, negative=sneg)
    finally:
        hook.remove()
    try:
        (wrong_dim,) = run_node("ContextWindowsManual", model=handle.unet, context_length=frames, context_overlap=1, dim=0)
        fx.sample(wrong_dim, latent=lat, positive=pos, negative=neg)
        wrong = None
    except Exception as e:  # reported
        wrong = f"{type(e).__name__}: {e}"
    ends = [0, -1]
    return {
        "full_frames_seen": full_frames, "window_frames_seen": window_frames,
        "windowed_vs_full": relative(windowed, full),
        "ends_windowed_vs_full": relative(windowed[:, :, ends], full[:, :, ends]),
        "middle_windowed_vs_full": relative(windowed[:, :, frames // 2 : -frames // 2], full[:, :, frames // 2 : -frames // 2]),
        "finite": bool(torch.isfinite(windowed).all()), "wrong_dim": wrong,
        "sketch_frames_seen": sketch_frames, "sketched_vs_windowed": relative(sketched, windowed),
    }


def merge_reference(fx: Fixture, ratio: float = 0.3) -> dict:
    """ModelMergeSimple's UNet weights once loaded against ratio * model1 + (1 - ratio) * model2 computed
    by hand from the two models' loaded weights (model2: the fixture LoRA merged in)."""
    import comfy.model_management as mm

    def loaded_weights(model) -> dict:
        mm.unload_all_models()
        mm.load_models_gpu([model])
        weights = {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}
        mm.unload_all_models()
        return weights

    model2 = fx.provide("model2")["model2"]
    (merged,) = run_node("ModelMergeSimple", model1=fx.handle.unet, model2=model2, ratio=ratio)
    one, two, got = loaded_weights(fx.handle.unet), loaded_weights(model2), loaded_weights(merged)

    def error_in_ulps(k) -> float:
        # ComfyUI merges in fp32 from model2's unrounded LoRA-patched weights and rounds the sum to the stored
        # dtype (stochastically): within an ulp of the sum plus the ulp `two` was rounded by when it loaded.
        finfo = torch.finfo(got[k].dtype)
        expected = ratio * one[k].float() + (1 - ratio) * two[k].float()
        ulp = finfo.eps * (expected.abs() + two[k].float().abs()) + finfo.smallest_normal * finfo.eps
        return float(((got[k].float() - expected).abs() / ulp).max())

    return {"weights": len(one), "merged_names": sum(k.startswith("diffusion_model.") for k in merged.patches),
            "differ": sum(not torch.equal(one[k], two[k]) for k in one), "dtype": str(next(iter(got.values())).dtype),
            "max_error_ulps": max(error_in_ulps(k) for k in one)}


def other_family_merge(fx: Fixture) -> str:
    """ModelMergeSimple with a model2 whose UNet is not ToonCrafter's (its input conv takes 4 channels,
    and it has a DiT block): the message, or '' when the merge went through."""
    import comfy.model_patcher
    from torch import nn

    unet = fx.handle.unet.model.diffusion_model
    conv = unet.input_blocks[0][0].weight
    other = nn.Module()
    other.diffusion_model = nn.Module()
    other.diffusion_model.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(4, conv.shape[0], 3)])])
    model2 = comfy.model_patcher.ModelPatcher(other, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    try:
        run_node("ModelMergeSimple", model1=fx.handle.unet, model2=model2, ratio=0.5)
        return ""
    except Exception as e:  # reported
        return f"{type(e).__name__}: {e}"
