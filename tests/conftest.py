"""Shared fixtures. ComfyUI ones start one real server (and one browser) per test session."""

import pytest
from comfy_harness import ComfyServer, FrontendSession
from helpers import (
    DC_I2V,
    DC_INTERP,
    TINY_KOHYA_LORA,
    TINY_LORA,
    TINY_SKETCH_ENCODER,
    tiny_checkpoint,
    tiny_kohya_lora,
    tiny_lora,
    tiny_sketch_encoder,
)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A running ComfyUI with this pack linked in and the tiny ToonCrafter model, a LoRA and a sketch encoder for it staged."""
    # Text and image encoders in fp32 as in the core (ComfyUI's CPU default is fp16, which moves the tiny
    # model's frames by up to 0.6/255): frame comparisons with the core then see PNG rounding only.
    # Latent previews on, as users run ComfyUI, so the progress messages carry them.
    server = ComfyServer(tmp_path_factory.mktemp("comfyui"), extra_args=("--fp32-text-enc", "--preview-method", "latent2rgb"))
    tiny_checkpoint(server.tooncrafter_models_dir, stem="tooncrafter_tiny")
    tiny_checkpoint(server.tooncrafter_models_dir, stem="dynamicrafter_tiny_i2v", case=DC_I2V)
    tiny_checkpoint(server.tooncrafter_models_dir, stem="dynamicrafter_tiny_interp", case=DC_INTERP)
    tiny_lora(server.models_dir / "loras" / TINY_LORA)
    tiny_kohya_lora(server.models_dir / "loras" / TINY_KOHYA_LORA)
    tiny_sketch_encoder(server.models_dir / "controlnet" / TINY_SKETCH_ENCODER)
    with server:
        yield server


@pytest.fixture(scope="session")
def comfy_frontend(comfy_server):
    """The server's frontend open in headless Chromium."""
    with FrontendSession(comfy_server.base_url) as session:
        yield session
