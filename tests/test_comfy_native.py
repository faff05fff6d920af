"""The native MODEL inside a real ComfyUI 0.3.64 (CPU, tiny fixture): stock KSampler and
SamplerCustomAdvanced against the core's DDIM, every sampler, ComfyUI's LoRA loader, lowvram partial
loading, progress with previews and Cancel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import uuid

import numpy as np
import pytest
from comfy_harness import comfy_sampler_names, run_in_comfy
from helpers import TINY_KOHYA_LORA
from test_comfy_nodes import _saved_images, _seed_prompt

SEED = 21

# In one process after comfy_harness.IN_PROCESS_PRELUDE: the core's DDIM on the Conditioning node's
# tensors, against the native model sampled by ComfyUI's own nodes; prints one JSON line of results.
PARITY = """
    import json
    from dataclasses import replace
    import numpy as np
    import nodes as comfy_nodes
    from comfy_extras.nodes_custom_sampler import CFGGuider, RandomNoise, SamplerCustomAdvanced
    from comfy_extras.nodes_model_advanced import RescaleCFG
    from tc_pack.nodes.conditioning import ToonCrafterConditioning
    from tc_pack.nodes.decoder import ToonCrafterDecode
    from tc_pack.nodes.native import ToonCrafterDDIM, ToonCrafterGuidanceRescale, ToonCrafterSigmas
    from tc_pack.nodes.sampler import ToonCrafterSampler
    from tc_pack.nodes.types import FS_KEY, KEYFRAMES_KEY
    from tc_pack.tooncrafter_core import frames as tc_frames, guidance, keyframes
    from tc_pack.tooncrafter_core.__main__ import main as cli
    from tc_pack.tooncrafter_core.sampling import Denoiser, ddim_plan, sample_ddim
    from tc_pack.tooncrafter_core.settings import SamplingConfig

    SEED = {seed}
    args.fp32_text_enc = True  # encoders in fp32, as the core computes them
    handle = tc_model.load("tiny.safetensors", "auto")
    keys = Path({repo!r}) / "workflows" / "keyframes"
    start, end = (tc_frames.load_image(keys / f"tooncrafter_{{n}}.png").movedim(1, -1) for n in ("start", "end"))
    pos, neg, lat = ToonCrafterConditioning.execute(handle, start, end, "a ball jumps", "", 10, 64, 64, "crop", 0).result
    unet, schedule = handle.unet.model.diffusion_model, handle.schedule

    def core_ddim(steps, eta, to_t0=False):
        generator = keyframes.seeded_generator(SEED)
        concat, x_T = keyframes.initial_latents(lat[KEYFRAMES_KEY], handle.config.frames, handle.config, generator, "cpu")
        cond = guidance.Conditioning(pos[0][0], neg[0][0], concat, pos[0][1][FS_KEY])
        guided = guidance.guided_model(unet, cond, SamplingConfig(steps=steps, eta=eta))
        plan = ddim_plan(schedule, steps, "uniform_trailing", eta)
        if to_t0:  # the last step brought to t = 0's scale, as an ODE solver ends
            plan[-1] = replace(plan[-1], rescale=float(schedule.scale_arr[0] / schedule.scale_arr[plan[-1].t]))
        with torch.inference_mode():
            return sample_ddim(Denoiser(guided, schedule), x_T, plan, generator=generator)

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    rescaled = ToonCrafterGuidanceRescale.execute(handle.unet, 0.7).result[0]

    def native(eta, steps, model=rescaled):
        noise = RandomNoise().get_noise(SEED)[0]
        guider = CFGGuider().get_guider(model, pos, neg, 7.5)[0]
        sampler = ToonCrafterDDIM.execute(eta).result[0]
        sigmas = ToonCrafterSigmas.execute(handle.unet, steps, "uniform_trailing").result[0]
        return SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, lat)[0]

    def ksampler(model, sampler="euler", scheduler="simple", steps=10):
        return comfy_nodes.KSampler().sample(model, SEED, steps, 7.5, sampler, scheduler, pos, neg, lat)[0]

    out = {{}}
    for eta in (0.0, 1.0):
        out[f"ddim_eta{{eta:g}}"] = rel(native(eta, 10)["samples"], core_ddim(10, eta))
    euler = ksampler(rescaled)
    out["ksampler_euler"] = rel(euler["samples"], core_ddim(10, 0.0))
    out["ksampler_euler_t0"] = rel(euler["samples"], core_ddim(10, 0.0, to_t0=True))
    out["rescalecfg"] = rel(ksampler(RescaleCFG().patch(handle.unet, 0.7)[0])["samples"], euler["samples"])
    out["decoded_finite"] = bool(torch.isfinite(ToonCrafterDecode.execute(handle, euler, 0, True).result[0]).all())

    # The same seed in the CLI, the four-node path and the native path (ToonCrafter DDIM), 3 steps eta 1.
    def pixels(images):
        return (images.numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8).astype(np.int16)
    four = ToonCrafterSampler.execute(handle, pos, neg, lat, SEED, 3, 7.5, 1.0, 0.7, "uniform_trailing").result[0]
    four = pixels(ToonCrafterDecode.execute(handle, four, 0, True).result[0])
    nat = pixels(ToonCrafterDecode.execute(handle, native(1.0, 3), 0, True).result[0])
    folder_out = Path(tempfile.mkdtemp())
    code = cli(["interpolate", "--ckpt", str(folder / "tiny.safetensors"), "--start", str(keys / "tooncrafter_start.png"),
                "--end", str(keys / "tooncrafter_end.png"), "--prompt", "a ball jumps", "--steps", "3", "--seed", str(SEED),
                "--height", "64", "--width", "64", "--out", str(folder_out)])
    from PIL import Image
    cli_frames = np.stack([np.asarray(Image.open(p)) for p in sorted(folder_out.glob("frame_*.png"))]).astype(np.int16)
    out["cli_exit"] = code
    out["levels_cli_four"] = int(np.abs(cli_frames - four).max())
    out["levels_cli_native"] = int(np.abs(cli_frames - nat).max())
    out["levels_four_native"] = int(np.abs(four - nat).max())

    # Lowvram: ComfyUI partially loads the native model (forced to 256 KB of weights on the device);
    # the layers outside it cast their weights at each call. The same latents as a full load.
    full = ksampler(handle.unet, steps=4)["samples"]
    mm.unload_all_models()
    model_load = mm.LoadedModel.model_load
    seen = []
    def partial(self, lowvram_model_memory=0, force_patch_weights=False):
        loaded = model_load(self, 256 * 1024, force_patch_weights)
        seen.append(getattr(self.model.model, "model_lowvram", False))
        return loaded
    mm.LoadedModel.model_load = partial
    low = ksampler(handle.unet, steps=4)["samples"]
    mm.LoadedModel.model_load = model_load
    out["lowvram_partially_loaded"] = bool(seen and seen[0])
    out["lowvram_vs_full"] = rel(low, full)

    # The loader's CLIP: ComfyUI's SD 2.x tokens through the checkpoint's own text encoder.
    from tc_pack.nodes.loader import LoadToonCrafterModel
    from tc_pack.nodes.native import ToonCrafterImageConditioning
    from tc_pack.tooncrafter_core.models.encoders import tokenize
    _, model_out, clip = LoadToonCrafterModel.execute("tiny.safetensors", "auto").result
    prompts = ["a ball jumps", "A Cheerful cartoon ball, jumps UP & waves!!", "", "cafe 123 over the hill"]
    theirs = [[t for t, _ in clip.tokenize(p)["h"][0]] for p in prompts]
    out["tokens_equal"] = theirs == tokenize(prompts).tolist()
    encode = comfy_nodes.CLIPTextEncode().encode
    text_pos, text_neg = encode(clip, "a ball jumps")[0], encode(clip, "")[0]
    ipos, ineg, ilat = ToonCrafterImageConditioning.execute(handle, text_pos, text_neg, start, end, 10, 64, 64, "crop", 0).result
    out["clip_context"] = rel(ipos[0][0], pos[0][0])
    out["clip_negative_context"] = rel(ineg[0][0], neg[0][0])
    via_clip = comfy_nodes.KSampler().sample(rescaled, SEED, 4, 7.5, "euler", "simple", ipos, ineg, ilat)[0]["samples"]
    out["clip_latents"] = rel(via_clip, ksampler(rescaled, steps=4)["samples"])
    weighted = encode(clip, "a (ball:1.5) jumps")[0]
    out["weighted_prompt_changes"] = rel(weighted[0][0], text_pos[0][0])
    sys.path.insert(0, {tests!r})
    from helpers import TINY_KOHYA_LORA, tiny_kohya_lora
    loras = Path(tempfile.mkdtemp())
    tiny_kohya_lora(loras / TINY_KOHYA_LORA)
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)
    lora_model, lora_clip = comfy_nodes.LoraLoader().load_lora(handle.unet, clip, TINY_KOHYA_LORA, 1.0, 1.0)
    with_lora = ksampler(lora_model, steps=4)["samples"]
    out["lora_loader_changes"] = rel(with_lora, ksampler(handle.unet, steps=4)["samples"])
    out["lora_loader_finite"] = bool(torch.isfinite(with_lora).all())
    out["lora_loader_clip_same_text"] = rel(encode(lora_clip, "a ball jumps")[0][0][0], text_pos[0][0])
    print("RESULTS " + json.dumps(out))
"""

SWEEP = """
    import json
    import comfy.samplers
    import nodes as comfy_nodes
    from tc_pack.nodes.conditioning import ToonCrafterConditioning
    from tc_pack.nodes.decoder import ToonCrafterDecode
    g = torch.Generator().manual_seed(0)
    start, end = torch.rand(1, 64, 64, 3, generator=g), torch.rand(1, 64, 64, 3, generator=g)
    pos, neg, lat = ToonCrafterConditioning.execute(handle, start, end, "a ball", "", 10, 64, 64, "crop", 0).result
    out = {{"samplers": list(comfy.samplers.KSampler.SAMPLERS), "runs": {{}}}}
    for name in comfy.samplers.KSampler.SAMPLERS:
        try:
            (latent,) = comfy_nodes.KSampler().sample(handle.unet, 5, 4, 7.5, name, "simple", pos, neg, lat)
            frames = ToonCrafterDecode.execute(handle, latent, 0, True).result[0]
            out["runs"][name] = "finite" if bool(torch.isfinite(frames).all()) else "non-finite frames"
        except Exception as e:  # reported per sampler by the test
            out["runs"][name] = f"{{type(e).__name__}}: {{e}}"
    print("RESULTS " + json.dumps(out))
"""


def _run(script: str) -> dict:
    return run_in_comfy(script.replace("{seed}", str(SEED)), timeout=900)


@pytest.fixture(scope="module")
def parity() -> dict:
    return _run(PARITY)


@pytest.fixture(scope="module")
def sweep() -> dict:
    return _run(SWEEP)


@pytest.mark.parametrize("eta", ["0", "1"])
def test_toon_crafter_ddim_in_sampler_custom_advanced_is_the_cores_ddim(parity, eta):
    assert parity[f"ddim_eta{eta}"] < 1e-4, parity


def test_stock_ksampler_euler_simple_integrates_the_originals_ode(parity):
    # `simple` gives the original's trailing timesteps and Euler is its DDIM with eta 0; the original's
    # last step alone differs: it keeps the previous level's scale (10 steps: s(99) = 0.93) where an
    # ODE solver ends at t = 0's.
    assert parity["ksampler_euler_t0"] < 1e-4, parity
    assert 0.01 < parity["ksampler_euler"] < 0.2, parity
    assert parity["decoded_finite"]


def test_comfyuis_rescale_cfg_is_not_the_originals_guidance_rescale(parity):
    # RescaleCFG recovers v for a plain VP model (sigma_data 1, no dynamic rescale), not for ToonCrafter's.
    assert parity["rescalecfg"] > 1e-3, parity


def test_the_same_seed_gives_the_same_frames_in_the_cli_the_four_nodes_and_the_native_path(parity):
    assert parity["cli_exit"] == 0
    assert parity["levels_cli_four"] <= 1, parity
    assert parity["levels_cli_native"] <= 1, parity
    assert parity["levels_four_native"] <= 1, parity


def test_lowvram_partial_loading_of_the_native_model_gives_the_full_loads_latents(parity):
    assert parity["lowvram_partially_loaded"], parity
    assert parity["lowvram_vs_full"] < 1e-5, parity


def test_the_loaders_clip_encodes_text_as_the_conditioning_node_does(parity):
    assert parity["tokens_equal"]
    assert parity["clip_context"] < 1e-6 and parity["clip_negative_context"] < 1e-6, parity
    assert parity["clip_latents"] < 1e-6, parity
    assert parity["weighted_prompt_changes"] > 1e-3  # ComfyUI's (word:weight) syntax works on it


def test_lora_loader_with_model_and_clip_patches_the_unet_and_leaves_the_text_encoder(parity):
    assert parity["lora_loader_finite"] and parity["lora_loader_changes"] > 1e-2, parity
    assert parity["lora_loader_clip_same_text"] == 0.0, parity


def test_the_sampler_list_is_read_from_the_pinned_comfyui(sweep):
    assert sweep["samplers"] == comfy_sampler_names()


@pytest.mark.parametrize("sampler", comfy_sampler_names())
def test_every_sampler_runs_4_steps_with_simple_and_gives_finite_frames(sweep, sampler):
    assert sweep["runs"][sampler] == "finite", f"{sampler}: {sweep['runs'][sampler]}"


# ---------------------------------------------------------------------------------------------
# In the server: ComfyUI's LoRA loader on the MODEL, progress with previews, Cancel


def _native_prompt(seed: int, steps: int = 3, lora: float | None = None, sampler: str = "ddim") -> dict:
    """`_seed_prompt`'s graph on the native MODEL: ToonCrafter Guidance Rescale -> CFGGuider ->
    SamplerCustomAdvanced with ToonCrafter DDIM (eta 1) and ToonCrafter Sigmas, or a stock KSampler."""
    prompt = _seed_prompt(seed, steps)
    model = ["1", 1]
    if lora is not None:
        prompt["20"] = {"class_type": "LoraLoaderModelOnly",
                        "inputs": {"model": model, "lora_name": TINY_KOHYA_LORA, "strength_model": lora}}
        model = ["20", 0]
    prompt["21"] = {"class_type": "ToonCrafterGuidanceRescale", "inputs": {"model": model, "multiplier": 0.7}}
    if sampler == "ddim":
        prompt.update({
            "22": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "23": {"class_type": "CFGGuider", "inputs": {"model": ["21", 0], "positive": ["4", 0], "negative": ["4", 1], "cfg": 7.5}},
            "24": {"class_type": "ToonCrafterDDIMSampler", "inputs": {"eta": 1.0}},
            "25": {"class_type": "ToonCrafterSigmas", "inputs": {"model": ["21", 0], "steps": steps, "timestep_spacing": "uniform_trailing"}},
            "5": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["22", 0], "guider": ["23", 0], "sampler": ["24", 0],
                                                                   "sigmas": ["25", 0], "latent_image": ["4", 2]}},
        })
    else:
        prompt["5"] = {"class_type": "KSampler", "inputs": {
            "model": ["21", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": sampler, "scheduler": "simple",
            "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["4", 2], "denoise": 1.0}}
    return prompt


def test_lora_loader_model_only_gives_the_frames_of_our_lora_node_and_bypassed_the_base(comfy_server):
    from test_comfy_lora import _with_lora

    four_base = _saved_images(comfy_server, comfy_server.run(_seed_prompt(seed=31), timeout=600))
    native_base = _saved_images(comfy_server, comfy_server.run(_native_prompt(seed=31), timeout=600))
    assert np.abs(native_base - four_base).max() <= 1.5 / 255
    for strength in (0.5, 1.0):
        ours = _saved_images(comfy_server, comfy_server.run(_with_lora(31, strength), timeout=600))
        # _with_lora uses the PEFT file; the kohya file holds the same factors and alpha
        native = _saved_images(comfy_server, comfy_server.run(_native_prompt(seed=31, lora=strength), timeout=600))
        assert np.abs(native - native_base).max() > 0.02  # the LoRA really changes the frames
        assert np.abs(native - ours).max() <= 1.5 / 255, strength
    again = _saved_images(comfy_server, comfy_server.run(_native_prompt(seed=31), timeout=600))
    assert np.array_equal(again, native_base)


async def _progress_then_cancel(comfy_server, prompt: dict, node: str, steps_before_cancel: int) -> tuple[str, list, int]:
    """Queue `prompt`, collect `node`'s progress events and the binary previews, interrupt after some steps."""
    import aiohttp

    client = uuid.uuid4().hex
    progress, previews = [], 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{comfy_server.port}/ws?clientId={client}") as ws:
            async with session.post(f"{comfy_server.base_url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                prompt_id = (await r.json())["prompt_id"]
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    previews += 1
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                if event["type"] == "progress" and data.get("prompt_id") == prompt_id and data.get("node") == node:
                    progress.append((data["value"], data["max"]))
                    if len(progress) == steps_before_cancel:
                        comfy_server.interrupt(prompt_id)
                if event["type"] in ("execution_interrupted", "execution_success", "execution_error") and \
                        data.get("prompt_id") == prompt_id:
                    return prompt_id, progress, previews
    raise AssertionError("the websocket closed before the prompt ended")


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_native_path_reports_progress_with_previews_and_cancel_stops_it(comfy_server, sampler):
    prompt = _native_prompt(seed=41, steps=1000, sampler=sampler)
    began = time.monotonic()
    # In a thread of its own: the frontend tests' Playwright keeps an event loop running in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        prompt_id, progress, previews = pool.submit(asyncio.run, _progress_then_cancel(comfy_server, prompt, "5", 3)).result()
    entry = comfy_server.wait_for(prompt_id, timeout=120, check=False)
    messages = dict(entry["status"]["messages"])
    assert "execution_interrupted" in messages, entry["status"]
    assert messages["execution_interrupted"]["node_type"] == ("KSampler" if sampler == "euler" else "SamplerCustomAdvanced")
    assert progress[:3] == [(1, 1000), (2, 1000), (3, 1000)]
    assert previews >= 3
    assert time.monotonic() - began < 120  # 1000 steps would take many minutes
    after = _saved_images(comfy_server, comfy_server.run(_native_prompt(seed=42, sampler=sampler), timeout=600))
    assert after.shape == (4, 64, 64, 3) and np.isfinite(after).all()
