"""Draws the example keyframes shipped in workflows/keyframes (flat cartoon, 512x320).

    python tools/draw_keyframes.py
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parents[1] / "workflows" / "keyframes"
W, H = 512, 320
INK = (25, 25, 35)


def _character(d: ImageDraw.ImageDraw, cx: int, cy: int, arms_up: bool, blink: bool, line_art: bool = False) -> None:
    r = 46
    body, shoes = ("white", "white") if line_art else ((255, 196, 60), (220, 60, 60))
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=body, outline=INK, width=4)  # body
    for ex in (cx - 16, cx + 16):  # eyes
        if blink:
            d.line((ex - 8, cy - 10, ex + 8, cy - 10), fill=INK, width=4)
        else:
            d.ellipse((ex - 7, cy - 18, ex + 7, cy - 2), fill="white", outline=INK, width=3)
            d.ellipse((ex - 2, cy - 12, ex + 4, cy - 5), fill=INK)
    d.arc((cx - 18, cy, cx + 18, cy + 24), 20, 160, fill=INK, width=4)  # smile
    for side in (-1, 1):
        shoulder = (cx + side * (r - 6), cy + 6)
        hand = (cx + side * (r + 34), cy - 40) if arms_up else (cx + side * (r + 22), cy + 30)
        d.line((*shoulder, *hand), fill=INK, width=6)
        d.ellipse((hand[0] - 8, hand[1] - 8, hand[0] + 8, hand[1] + 8), fill="white", outline=INK, width=3)
        foot_x = cx + side * 20
        d.line((foot_x, cy + r - 4, foot_x, cy + r + 22), fill=INK, width=6)
        d.ellipse((foot_x - 14, cy + r + 16, foot_x + 10, cy + r + 30), fill=shoes, outline=INK, width=3)


def draw(cx: int, cy: int, arms_up: bool, blink: bool, sun_x: int) -> Image.Image:
    im = Image.new("RGB", (W, H), (140, 205, 250))
    d = ImageDraw.Draw(im)
    d.ellipse((sun_x - 30, 20, sun_x + 30, 80), fill=(255, 240, 150), outline=INK, width=3)
    d.polygon([(0, 250), (140, 190), (300, 240), (420, 200), (W, 235), (W, H), (0, H)], fill=(110, 190, 90), outline=INK)
    d.rectangle((0, 268, W, H), fill=(90, 160, 75))
    _character(d, cx, cy, arms_up, blink)
    return im


def sketch(cx: int, cy: int, arms_up: bool) -> Image.Image:
    """A sketch for sketch guidance: the character's lines only, dark on white paper, with the horizon."""
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    d.line([(0, 250), (140, 190), (300, 240), (420, 200), (W, 235)], fill=INK, width=3)
    _character(d, cx, cy, arms_up, blink=False, line_art=True)
    return im


def scene_lines(cx: int, cy: int, arms_up: bool, blink: bool, sun_x: int) -> Image.Image:
    """`draw`'s scene as an inker exports it for colouring: the same lines on a transparent layer."""
    im = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((sun_x - 30, 20, sun_x + 30, 80), outline=INK, width=3)
    d.polygon([(0, 250), (140, 190), (300, 240), (420, 200), (W, 235), (W, H), (0, H)], outline=INK)
    d.line((0, 268, W, 268), fill=INK, width=1)
    _character(d, cx, cy, arms_up, blink, line_art=True)
    return im


# The colorize workflow's shot: a jump over 25 frames, coloured at frames 0, 12 and 24.
COLORIZE_FRAMES = 25
COLORIZE_KEYS = (0, 12, 24)


def jump(frame: int) -> dict:
    """The pose of the colorize shot's frame `frame`: up and to the right, arms up from frame 8."""
    s = frame / (COLORIZE_FRAMES - 1)
    return dict(cx=round(150 + 190 * s), cy=round(190 - 160 * s * (1 - s) - 60 * s), arms_up=frame >= 8,
                blink=frame >= 22, sun_x=round(400 + 20 * s))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    frames = {
        "tooncrafter_start.png": draw(150, 190, arms_up=False, blink=False, sun_x=400),
        # The sequence workflow's middle keyframe: half-way up, one arm of the pose still to come.
        "tooncrafter_middle.png": draw(250, 150, arms_up=True, blink=False, sun_x=410),
        "tooncrafter_end.png": draw(340, 130, arms_up=True, blink=True, sun_x=420),
        # The sketch workflow's guides for frames 5 and 10 of 16: the jump's path drawn in between.
        "tooncrafter_sketch_05.png": sketch(205, 120, arms_up=False),
        "tooncrafter_sketch_10.png": sketch(280, 100, arms_up=True),
    }
    for frame in range(COLORIZE_FRAMES):
        frames[f"tooncrafter_colorize_lines/line_{frame:03d}.png"] = scene_lines(**jump(frame))
    for frame in COLORIZE_KEYS:
        frames[f"tooncrafter_colorize_key_{frame:02d}.png"] = draw(**jump(frame))
    for name, im in frames.items():
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(OUT / name, optimize=True)
        logging.info("wrote %s", OUT / name)


if __name__ == "__main__":
    main()
