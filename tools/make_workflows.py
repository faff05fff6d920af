"""Writes the example workflows (ComfyUI UI format) and their thumbnails into workflows/.

    python tools/make_workflows.py

Widget values follow each node's input order in ComfyUI's /object_info (the tests check that
every value lands on a real input by converting the files to API format).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"
KEYFRAMES = OUT / "keyframes"

FULL_CKPT = "tooncrafter_512_interp-fp16.safetensors"
DC_I2V_CKPT = "dynamicrafter_512.ckpt"
DC_INTERP_CKPT = "dynamicrafter_512_interp.ckpt"
PRUNED_CKPT = "tooncrafter_512_interp-pruned-fp16.safetensors"
TEXT_ENCODER = "open_clip_vit_h_text.safetensors"
CLIP_VISION = "clip_vision_h.safetensors"
SKETCH_ENCODER = "sketch_encoder-fp16.safetensors"
SKETCH_FRAMES = (5, 10)
PROMPT = "a cheerful cartoon ball character jumps up and waves, flat colors, clean line art"
DC_PROMPT = "a cheerful cartoon ball character bounces and waves"


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: list
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    inputs: list[tuple[str, str]] = field(default_factory=list)  # socket inputs (name, type)
    title: str | None = None
    size: tuple[int, int] = (320, 130)


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    links: list[list] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def link(self, src: Node, slot: int, dst: Node, name: str) -> None:
        link_id = len(self.links) + 1
        kind = src.outputs[slot][1]
        self.links.append([link_id, src.id, slot, dst.id, [n for n, _ in dst.inputs].index(name), kind])

    def to_json(self, note: str | None = None) -> dict:
        nodes = []
        for order, n in enumerate(self.nodes):
            inputs = []
            for slot, (name, kind) in enumerate(n.inputs):
                link = next((l[0] for l in self.links if l[3] == n.id and l[4] == slot), None)
                inputs.append({"name": name, "type": kind, "link": link})
            outputs = []
            for slot, (name, kind) in enumerate(n.outputs):
                links = [l[0] for l in self.links if l[1] == n.id and l[2] == slot]
                outputs.append({"name": name, "type": kind, "links": links or None, "slot_index": slot})
            entry = {
                "id": n.id,
                "type": n.type,
                "pos": list(n.pos),
                "size": list(n.size),
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": inputs,
                "outputs": outputs,
                "properties": {"Node name for S&R": n.type},
                "widgets_values": n.widgets,
            }
            if n.title:
                entry["title"] = n.title
            nodes.append(entry)
        if note:
            nodes.append(
                {
                    "id": max(n.id for n in self.nodes) + 1,
                    "type": "Note",
                    "pos": [20, -180],
                    "size": [560, 150],
                    "flags": {},
                    "order": len(nodes),
                    "mode": 0,
                    "inputs": [],
                    "outputs": [],
                    "properties": {},
                    "widgets_values": [note],
                }
            )
        return {
            "last_node_id": max(n["id"] for n in nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [60, 240]}},
            "version": 0.4,
        }


MODEL_T = ("model", "TOONCRAFTER_MODEL")
LOADER_OUTPUTS = [MODEL_T, ("MODEL", "MODEL"), ("CLIP", "CLIP")]
# docs/native-model.md: ipndm/beta matched DDIM-50's error at 16 steps on the tiny fixture and at 25 on the
# full-size architecture, which is what users run.
FAST_SAMPLER, FAST_SCHEDULER, FAST_STEPS = "ipndm", "beta", 25


def _pipeline(ckpt: str, weight_dtype: str, steps: int, chunk: int, second_decode: bool, with_clip: bool) -> Graph:
    g = Graph()
    model_t = MODEL_T
    loader = g.add(Node(1, "ToonCrafterModelLoader", (20, 20), [ckpt, weight_dtype, "auto", False], LOADER_OUTPUTS,
                        title="Load ToonCrafter Model"))
    start = g.add(Node(2, "LoadImage", (20, 240), ["tooncrafter_start.png", "image"], [("IMAGE", "IMAGE"), ("MASK", "MASK")],
                       title="Start keyframe", size=(300, 320)))
    end = g.add(Node(3, "LoadImage", (20, 620), ["tooncrafter_end.png", "image"], [("IMAGE", "IMAGE"), ("MASK", "MASK")],
                     title="End keyframe", size=(300, 320)))
    cond_inputs = [model_t, ("start_image", "IMAGE"), ("end_image", "IMAGE"), ("clip", "CLIP"), ("clip_vision", "CLIP_VISION")]
    cond = g.add(Node(4, "ToonCrafterConditioning", (380, 20), [PROMPT, "", 10, 512, 320, "crop", 0, 0.0],
                      [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")], cond_inputs,
                      size=(400, 420)))
    sampler = g.add(Node(5, "ToonCrafterSampler", (820, 20), [123, "fixed", steps, 7.5, 1.0, 0.7, "uniform_trailing"],
                         [("latent", "LATENT")],
                         [model_t, ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
                         size=(320, 300)))
    decode = g.add(Node(6, "ToonCrafterDecode", (820, 380), [chunk, second_decode], [("frames", "IMAGE")],
                        [model_t, ("latent", "LATENT")], size=(320, 130)))
    video = g.add(Node(7, "CreateVideo", (1180, 20), [8], [("VIDEO", "VIDEO")], [("images", "IMAGE"), ("audio", "AUDIO")]))
    save = g.add(Node(8, "SaveVideo", (1180, 200), ["video/tooncrafter", "auto", "auto"], [], [("video", "VIDEO")],
                      size=(420, 420)))
    g.link(loader, 0, cond, "model")
    g.link(start, 0, cond, "start_image")
    g.link(end, 0, cond, "end_image")
    for dst in (sampler, decode):
        g.link(loader, 0, dst, "model")
    g.link(cond, 0, sampler, "positive")
    g.link(cond, 1, sampler, "negative")
    g.link(cond, 2, sampler, "latent")
    g.link(sampler, 0, decode, "latent")
    g.link(decode, 0, video, "images")
    g.link(video, 0, save, "video")
    if with_clip:
        clip = g.add(Node(9, "CLIPLoader", (20, 1000), [TEXT_ENCODER, "stable_diffusion", "default"], [("CLIP", "CLIP")],
                          title="OpenCLIP ViT-H text encoder"))
        vision = g.add(Node(10, "CLIPVisionLoader", (20, 1180), [CLIP_VISION], [("CLIP_VISION", "CLIP_VISION")],
                            title="OpenCLIP ViT-H-14 vision"))
        g.link(clip, 0, cond, "clip")
        g.link(vision, 0, cond, "clip_vision")
    return g


def _sequence() -> Graph:
    g = Graph()
    model_t = ("model", "TOONCRAFTER_MODEL")
    image_t = ("IMAGE", "IMAGE")
    loader = g.add(Node(1, "ToonCrafterModelLoader", (20, 20), [FULL_CKPT, "auto", "auto", False], LOADER_OUTPUTS,
                        title="Load ToonCrafter Model"))
    loads = [
        g.add(Node(2 + i, "LoadImage", (20, 240 + 380 * i), [f"tooncrafter_{name}.png", "image"], [image_t, ("MASK", "MASK")],
                   title=f"Keyframe {i + 1}", size=(300, 320)))
        for i, name in enumerate(("start", "middle", "end"))
    ]
    batch_inputs = [("image1", "IMAGE"), ("image2", "IMAGE")]
    first = g.add(Node(5, "ImageBatch", (360, 300), [], [image_t], batch_inputs, title="Batch keyframes 1+2", size=(220, 60)))
    both = g.add(Node(6, "ImageBatch", (360, 420), [], [image_t], batch_inputs, title="Batch keyframes 1+2+3", size=(220, 60)))
    seq_inputs = [model_t, ("keyframes", "IMAGE"), ("clip", "CLIP"), ("clip_vision", "CLIP_VISION")]
    seq = g.add(Node(7, "ToonCrafterSequence", (620, 20),
                     [PROMPT, "", 10, 512, 320, "crop", 0, False, 123, "fixed", 50, 7.5, 1.0, 0.7, "uniform_trailing", 0, True,
                      0],
                     [("frames", "IMAGE")], seq_inputs, size=(400, 640)))
    video = g.add(Node(8, "CreateVideo", (1060, 20), [8], [("VIDEO", "VIDEO")], [("images", "IMAGE"), ("audio", "AUDIO")]))
    save = g.add(Node(9, "SaveVideo", (1060, 200), ["video/tooncrafter_sequence", "auto", "auto"], [], [("video", "VIDEO")],
                      size=(420, 420)))
    g.link(loads[0], 0, first, "image1")
    g.link(loads[1], 0, first, "image2")
    g.link(first, 0, both, "image1")
    g.link(loads[2], 0, both, "image2")
    g.link(loader, 0, seq, "model")
    g.link(both, 0, seq, "keyframes")
    g.link(seq, 0, video, "images")
    g.link(video, 0, save, "video")
    return g


def _sketch() -> Graph:
    """The basic graph with ToonCrafter Apply Sketch between the conditioning and the sampler."""
    g = _pipeline(FULL_CKPT, "auto", 50, 0, True, with_clip=False)
    nodes = {n.id: n for n in g.nodes}
    cond, sampler = nodes[4], nodes[5]
    g.links = [l for l in g.links if not (l[1] == cond.id and l[3] == sampler.id and l[2] in (0, 1))]
    for link_id, link in enumerate(g.links, start=1):
        link[0] = link_id
    image_t = ("IMAGE", "IMAGE")
    encoder = g.add(Node(9, "ToonCrafterSketchEncoderLoader", (20, 1000), [SKETCH_ENCODER],
                         [("sketch_encoder", "TOONCRAFTER_SKETCH_ENCODER")], title="Load ToonCrafter Sketch Encoder"))
    sketches = [
        g.add(Node(10 + i, "LoadImage", (380 + 320 * i, 580), [f"tooncrafter_sketch_{n:02d}.png", "image"],
                   [image_t, ("MASK", "MASK")], title=f"Sketch for frame {n}", size=(300, 320)))
        for i, n in enumerate(SKETCH_FRAMES)
    ]
    batch = g.add(Node(12, "ImageBatch", (380, 960), [], [image_t], [("image1", "IMAGE"), ("image2", "IMAGE")],
                       title="Batch sketches", size=(220, 60)))
    apply = g.add(Node(13, "ToonCrafterApplySketch", (1180, 700), [", ".join(map(str, SKETCH_FRAMES)), 0.6, "crop"],
                       [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
                       [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT"),
                        ("sketch_encoder", "TOONCRAFTER_SKETCH_ENCODER"), ("sketches", "IMAGE")],
                       size=(340, 200)))
    g.link(sketches[0], 0, batch, "image1")
    g.link(sketches[1], 0, batch, "image2")
    g.link(cond, 0, apply, "positive")
    g.link(cond, 1, apply, "negative")
    g.link(cond, 2, apply, "latent")
    g.link(encoder, 0, apply, "sketch_encoder")
    g.link(batch, 0, apply, "sketches")
    g.link(apply, 0, sampler, "positive")
    g.link(apply, 1, sampler, "negative")
    return g


def _ksampler() -> Graph:
    """The basic graph with the stock KSampler on the loader's MODEL (with the original's guidance rescale)."""
    g = _pipeline(FULL_CKPT, "auto", 50, 0, True, with_clip=False)
    nodes = {n.id: n for n in g.nodes}
    loader, cond, decode = nodes[1], nodes[4], nodes[6]
    g.nodes = [n for n in g.nodes if n.id != 5]
    g.links = [l for l in g.links if 5 not in (l[1], l[3])]
    for link_id, link in enumerate(g.links, start=1):
        link[0] = link_id
    model_t = ("model", "MODEL")
    rescale = g.add(Node(9, "ToonCrafterGuidanceRescale", (820, 20), [0.7], [("MODEL", "MODEL")], [model_t],
                         title="ToonCrafter Guidance Rescale", size=(320, 80)))
    sampler = g.add(Node(5, "KSampler", (820, 140), [123, "fixed", FAST_STEPS, 7.5, FAST_SAMPLER, FAST_SCHEDULER, 1.0],
                         [("LATENT", "LATENT")],
                         [model_t, ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
                         size=(320, 270)))
    g.link(loader, 1, rescale, "model")
    g.link(rescale, 0, sampler, "model")
    g.link(cond, 0, sampler, "positive")
    g.link(cond, 1, sampler, "negative")
    g.link(cond, 2, sampler, "latent_image")
    g.link(sampler, 0, decode, "latent")
    decode.pos = (820, 520)
    return g


def _dynamicrafter_i2v() -> Graph:
    """DynamiCrafter image-to-video: one image -> DynamiCrafter Image Conditioning -> the stock KSampler."""
    g = _ksampler()
    nodes = {n.id: n for n in g.nodes}
    loader, start = nodes[1], nodes[2]
    loader.widgets = [DC_I2V_CKPT, "fp16", "auto", False]
    loader.title = "Load DynamiCrafter 512 (image-to-video)"
    g.nodes = [n for n in g.nodes if n.id not in (3, 4)]
    g.links = [l for l in g.links if not ({l[1], l[3]} & {3, 4})]
    image_cond = g.add(Node(4, "DynamiCrafterImageConditioning", (380, 20), [DC_PROMPT, "", 0, 512, 320, "crop", 0],
                            [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
                            [MODEL_T, ("image", "IMAGE"), ("clip", "CLIP"), ("clip_vision", "CLIP_VISION")],
                            size=(400, 420)))
    start.title = "First frame"
    sampler = nodes[5]
    g.link(loader, 0, image_cond, "model")
    g.link(start, 0, image_cond, "image")
    g.link(image_cond, 0, sampler, "positive")
    g.link(image_cond, 1, sampler, "negative")
    g.link(image_cond, 2, sampler, "latent_image")
    for link_id, link in enumerate(g.links, start=1):
        link[0] = link_id
    nodes[8].widgets = ["video/dynamicrafter", "auto", "auto"]
    return g


def _dynamicrafter_interp() -> Graph:
    """DynamiCrafter's 512 interpolation model in the basic graph (its own fs, 5)."""
    g = _pipeline(DC_INTERP_CKPT, "fp16", 50, 0, True, with_clip=False)
    nodes = {n.id: n for n in g.nodes}
    nodes[1].title = "Load DynamiCrafter 512 interpolation"
    nodes[4].widgets = [DC_PROMPT, "", 0, 512, 320, "crop", 0, 0.0]
    nodes[8].widgets = ["video/dynamicrafter_interp", "auto", "auto"]
    return g


COLORIZE_LINES = "tooncrafter_colorize_lines"
COLORIZE_KEYS = (0, 12, 24)


def _colorize() -> Graph:
    """A line-art folder and three coloured keys -> ToonCrafter Colorize -> a video."""
    g = Graph()
    image_t = ("IMAGE", "IMAGE")
    loader = g.add(Node(1, "ToonCrafterModelLoader", (20, 20), [FULL_CKPT, "auto", "auto", False], LOADER_OUTPUTS,
                        title="Load ToonCrafter Model"))
    lines = g.add(Node(2, "ToonCrafterLoadLineArt", (20, 250), [COLORIZE_LINES], [("line_art", "IMAGE")],
                       title="Line art (25 frames)", size=(320, 60)))
    encoder = g.add(Node(3, "ToonCrafterSketchEncoderLoader", (20, 370), [SKETCH_ENCODER],
                         [("sketch_encoder", "TOONCRAFTER_SKETCH_ENCODER")], title="Load ToonCrafter Sketch Encoder",
                         size=(320, 60)))
    keys = [
        g.add(Node(4 + i, "LoadImage", (20 + 320 * i, 1060), [f"tooncrafter_colorize_key_{k:02d}.png", "image"],
                   [image_t, ("MASK", "MASK")], title=f"Coloured key, frame {k}", size=(300, 320)))
        for i, k in enumerate(COLORIZE_KEYS)
    ]
    batch_inputs = [("image1", "IMAGE"), ("image2", "IMAGE")]
    first = g.add(Node(7, "ImageBatch", (20, 490), [], [image_t], batch_inputs, title="Batch keys 0+12", size=(220, 60)))
    both = g.add(Node(8, "ImageBatch", (20, 600), [], [image_t], batch_inputs, title="Batch keys 0+12+24", size=(220, 60)))
    colorize_inputs = [MODEL_T, ("sketch_encoder", "TOONCRAFTER_SKETCH_ENCODER"), ("line_art", "IMAGE"), ("keys", "IMAGE"),
                       ("clip", "CLIP"), ("clip_vision", "CLIP_VISION"), ("line_art_mask", "MASK")]
    colorize = g.add(Node(9, "ToonCrafterColorize", (380, 20),
                          [", ".join(map(str, COLORIZE_KEYS)), PROMPT, "", 0, 512, 320, "crop", 123, "fixed", 50, 7.5, 1.0,
                           0.7, "uniform_trailing", 1.0, 16, False, False, False, 0, True],
                          [("frames", "IMAGE")], colorize_inputs, size=(420, 980)))
    video = g.add(Node(10, "CreateVideo", (840, 20), [8], [("VIDEO", "VIDEO")], [("images", "IMAGE"), ("audio", "AUDIO")]))
    save = g.add(Node(11, "SaveVideo", (840, 200), ["video/tooncrafter_colorize", "auto", "auto"], [], [("video", "VIDEO")],
                      size=(420, 420)))
    g.link(keys[0], 0, first, "image1")
    g.link(keys[1], 0, first, "image2")
    g.link(first, 0, both, "image1")
    g.link(keys[2], 0, both, "image2")
    g.link(loader, 0, colorize, "model")
    g.link(encoder, 0, colorize, "sketch_encoder")
    g.link(lines, 0, colorize, "line_art")
    g.link(both, 0, colorize, "keys")
    g.link(colorize, 0, video, "images")
    g.link(video, 0, save, "video")
    return g


WORKFLOWS = {
    "tooncrafter_basic": (
        _pipeline(FULL_CKPT, "auto", 50, 0, True, with_clip=False),
        "Two keyframes in, a 16-frame in-between out, saved as a video. The checkpoint is downloaded into "
        "models/tooncrafter on first run (5.3 GB). Replace the keyframes with your own drawings.",
    ),
    "tooncrafter_pruned_fp16_with_comfy_clip": (
        _pipeline(PRUNED_CKPT, "auto", 50, 0, True, with_clip=True),
        f"The pruned fp16 checkpoint has no text/image encoders: ComfyUI loads them instead. Text: the OpenCLIP "
        f"ViT-H-14 text encoder, which is SD 2.x's (e.g. text_encoder/model.safetensors of stabilityai/"
        f"stable-diffusion-2-1 on Hugging Face), in models/text_encoders as {TEXT_ENCODER}. Image: the ViT-H-14 "
        f"vision model {CLIP_VISION} (Comfy-Org/Wan_2.1_ComfyUI_repackaged, split_files/clip_vision) in "
        "models/clip_vision.",
    ),
    "tooncrafter_low_vram": (
        _pipeline(FULL_CKPT, "fp16", 25, 0, False, with_clip=False),
        "Low-VRAM settings: fp16 weights, 25 steps and no second decode; the decode offloads the UNet and "
        "splits the clip into chunks by itself when memory is short. Start ComfyUI with --lowvram on small cards; "
        "ComfyUI then streams UNet layers to the GPU. Measured with an 8 GiB budget: 9.39 GiB peak in the decode, "
        "4.73 GiB with frames_per_chunk 4 (docs/performance.md).",
    ),
    "tooncrafter_sequence": (
        _sequence(),
        "Three keyframes in, one 31-frame clip out: keyframe 1 -> 2 and 2 -> 3, each shared keyframe once. "
        "Add keyframes with more Batch Images nodes; switch loop on to go from the last keyframe back to the "
        "first. One prompt line for all segments, or one line per segment; segment i uses seed + i.",
    ),
    "tooncrafter_ksampler": (
        _ksampler(),
        f"The stock KSampler on the loader's MODEL: {FAST_SAMPLER} with the {FAST_SCHEDULER} scheduler matched the error "
        "of the original's 50 DDIM steps at 16 steps on the tiny test model and at 25 on the full-size architecture "
        f"with random weights (docs/native-model.md), so this uses {FAST_STEPS}: half the UNet passes. Not measured on "
        "the released weights. Any sampler and scheduler work; ToonCrafter Guidance Rescale is the original's 0.7.",
    ),
    "tooncrafter_sketch": (
        _sketch(),
        "Sketch guidance: two drawn sketches (dark lines on white) steer frames 5 and 10 of the 16; the other "
        "frames get an empty sketch, which still goes through the encoder and steers them too, as in the "
        "reference. The sketch encoder (728 MB) is downloaded into models/controlnet on first "
        "run. Draw your own, list their frames in frame_indices, and set strength (0.6 as the reference app).",
    ),
    "tooncrafter_colorize": (
        _colorize(),
        "Line art in, colour out: 25 line-art frames (the folder input/tooncrafter_colorize_lines) and keys coloured "
        "at frames 0, 12 and 24. Between two keys ToonCrafter interpolates them with every frame's lines through the "
        "sketch encoder; the keys come back exactly as given. The checkpoint (5.3 GB) and the sketch encoder (728 MB) "
        "are downloaded on first run. Your shot: a folder of line-art PNGs in name order under ComfyUI's input "
        "folder, a coloured key at least at the first and last frame and every 15 frames, their frames in key_frames.",
    ),
    "dynamicrafter_i2v": (
        _dynamicrafter_i2v(),
        "DynamiCrafter image-to-video: one image and a prompt, a 16-frame clip that starts from the image, sampled "
        "by the stock KSampler. The DynamiCrafter 512 release (10.4 GB, fp32, with its encoders) is downloaded into "
        "models/tooncrafter on first run and kept in fp16. frame_stride 0 is the model's (24 fps for 512).",
    ),
    "dynamicrafter_interp": (
        _dynamicrafter_interp(),
        "DynamiCrafter's 512 interpolation model: two keyframes, the in-betweens. Its release (10.4 GB) is "
        "downloaded into models/tooncrafter on first run. frame_stride 0 is the model's (5, as its scripts).",
    ),
}


def thumbnail(title: str, keyframes: tuple[str, ...] = ("start", "end")) -> Image.Image:
    """The keyframes side by side with arrows between them, 448x200."""
    width = min(192, (448 - 16 * (len(keyframes) + 1)) // len(keyframes))
    height = width * 5 // 8
    im = Image.new("RGB", (448, 200), (245, 245, 250))
    d = ImageDraw.Draw(im)
    for i, name in enumerate(keyframes):
        x = 16 + i * (width + 16)
        im.paste(Image.open(KEYFRAMES / f"tooncrafter_{name}.png").resize((width, height)), (x, 48))
        if i:
            d.polygon([(x - 13, 100), (x - 3, 108), (x - 13, 116)], fill=(30, 30, 40))
    d.text((16, 14), title, fill=(30, 30, 40))
    d.text((16, 176), "ToonCrafter in-between", fill=(90, 90, 110))
    return im


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, (graph, note) in WORKFLOWS.items():
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(graph.to_json(note), indent=1) + "\n")
        keyframes = {"tooncrafter_sequence": ("start", "middle", "end"),
                     "tooncrafter_sketch": ("start", "sketch_05", "sketch_10", "end"),
                     "dynamicrafter_i2v": ("start",),
                     "tooncrafter_colorize": tuple(f"colorize_key_{k:02d}" for k in COLORIZE_KEYS)}.get(name, ("start", "end"))
        thumbnail(name.replace("_", " "), keyframes).save(OUT / f"{name}.jpg", quality=85)
        logging.info("wrote %s", path)


if __name__ == "__main__":
    main()
