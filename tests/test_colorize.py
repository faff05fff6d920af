"""Line-art colorization from coloured keys in the core and the CLI (the node is in test_comfy_colorize.py)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint, tiny_sketch_encoder
from PIL import Image, ImageDraw

from tooncrafter_core import colorize as tc_colorize
from tooncrafter_core import frames as tc_frames
from tooncrafter_core.colorize import (
    ColorizeOptions,
    PipelineRunner,
    Segment,
    colorize,
    plan_segments,
    prepare_line_art,
)
from tooncrafter_core.errors import InputError
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.sketches import SketchGuide, sketch_hint
from tooncrafter_core.weights.checkpoint import load_model
from tooncrafter_core.weights.sketch_encoder import load_sketch_encoder

SAMPLING = SamplingConfig(steps=2)
SIZE = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, dtype=torch.float32)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    return tiny_sketch_encoder(tmp_path_factory.mktemp("sketch") / "encoder.safetensors")


@pytest.fixture(scope="module")
def encoder(encoder_file):
    return load_sketch_encoder(encoder_file, torch.float32)


def draw(frame: int, colored: bool = False, mode: str = "RGB") -> Image.Image:
    """Frame `frame` of a ball crossing a horizon: black lines on white (or on transparent with RGBA),
    or filled with its colours for a key."""
    paper = (0, 0, 0, 0) if mode == "RGBA" else "white"
    im = Image.new(mode, (SIZE, SIZE), (70, 130, 220) if colored else paper)
    d = ImageDraw.Draw(im)
    x = 6 + 5 * frame
    if colored:
        d.rectangle((0, 44, SIZE, SIZE), fill=(60, 170, 70))
    d.line((0, 44, SIZE, 44), fill="black", width=2)
    d.ellipse((x, 14, x + 22, 36), outline="black", width=2, fill=(230, 60, 50) if colored else None)
    return im


def to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def line_art(n: int) -> torch.Tensor:
    return torch.cat([to_tensor(draw(i)) for i in range(n)])


def keys_for(indices) -> dict[int, torch.Tensor]:
    return {k: to_tensor(draw(k, colored=True)) for k in indices}


def runner(model, encoder, **kwargs) -> PipelineRunner:
    return PipelineRunner(model, encoder, "a red ball", SAMPLING, **kwargs)


# ---------------------------------------------------------------------------------------------
# Planning


def test_keys_split_the_shot_into_segments_with_seed_plus_i():
    segments = plan_segments(9, [8, 0, 4], ColorizeOptions(seed=5))
    assert segments == [Segment(0, (0, 1, 2, 3, 4), 5), Segment(1, (4, 5, 6, 7, 8), 6)]
    # ComfyUI's largest seed wraps for the next segment instead of overflowing the generator (the soak found it).
    assert [s.seed for s in plan_segments(9, [0, 4, 8], ColorizeOptions(seed=2**64 - 1))] == [2**64 - 1, 0]


@pytest.mark.parametrize(
    "frames, keys, options, message",
    [
        (9, [0], ColorizeOptions(), "colorize needs coloured keys at frame 0 and frame 8 (dual reference), got 1 key(s) [0]"),
        (9, [0, 6], ColorizeOptions(), "the first and last frames must be coloured keys (dual reference), got keys [0, 6]: "
         "colour frame 8 too"),
        (9, [2, 8], ColorizeOptions(), "colour frame 0 too"),
        (9, [0, 8, 9], ColorizeOptions(), "key frame(s) [9] are outside the line art's frames 0..8"),
        (9, [0, 4, 4, 8], ColorizeOptions(), "frame(s) [4] have more than one key"),
        (9, [0, 4, 5, 8], ColorizeOptions(), "keys at frames 4 and 5 leave no frame between them to colour"),
        (40, [0, 39], ColorizeOptions(), "frames 0-39 make a 40-frame segment, longer than max_segment 16: add coloured keys "
         "at frame(s) 13, 26"),
        (9, [0, 8], ColorizeOptions(max_segment=5), "add coloured keys at frame(s) 4"),
        (9, [0, 8], ColorizeOptions(max_segment=2), "max_segment must be at least 3"),
        (2, [0, 1], ColorizeOptions(), "the line art has 2 frame(s): colorize needs at least 3"),
        (9, [0, 8], ColorizeOptions(single_key=True), "single_key takes exactly one coloured key, got 2"),
        (9, [7], ColorizeOptions(single_key=True), "single_key: the key at frame 7 leaves only frame 8 on that side"),
    ],
)
def test_bad_keys_are_refused_in_one_line_naming_the_fix(frames, keys, options, message):
    with pytest.raises(InputError) as e:
        plan_segments(frames, keys, options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_keys_a_long_gap_needs_are_enough():
    (message,) = [str(e) for e in [_error(lambda: plan_segments(40, [0, 39]))]]
    added = [int(n) for n in message.rsplit("frame(s) ", 1)[1].split(", ")]
    assert plan_segments(40, [0, *added, 39])[-1].last == 39


def _error(fn):
    try:
        fn()
    except InputError as e:
        return e
    raise AssertionError("no InputError")


def test_single_key_runs_outwards_from_the_key_in_even_pieces():
    segments = plan_segments(30, [10], ColorizeOptions(single_key=True, max_segment=8, seed=1))
    # 10 -> 29 in three pieces of 7 or 6 steps, then 10 -> 0 in two of 5, each from the frame before coloured.
    assert [(s.first, s.last) for s in segments] == [(10, 16), (16, 23), (23, 29), (10, 5), (5, 0)]
    assert segments[3].frames == (10, 9, 8, 7, 6, 5)
    assert [s.seed for s in segments] == [1, 2, 3, 4, 5]
    covered = sorted({f for s in segments for f in s.frames})
    assert covered == list(range(30)) and all(3 <= len(s.frames) <= 8 for s in segments)


# ---------------------------------------------------------------------------------------------
# Line art as artists export it


def test_alpha_line_art_is_the_same_lines_on_white_paper_and_off_white_paper_is_levelled():
    flat = torch.cat([to_tensor(draw(i)) for i in range(3)])
    rgba = torch.cat([to_tensor(draw(i, mode="RGBA")) for i in range(3)])
    assert rgba.shape[1] == 4 and rgba[:, :3].amax() == 0  # transparent pixels are black underneath
    assert torch.equal(prepare_line_art(rgba), prepare_line_art(flat))
    off_white = flat * 0.9  # black lines stay black, the paper goes to 0.9
    assert torch.allclose(prepare_line_art(off_white), flat, atol=1e-6)


def test_alpha_png_files_load_onto_white_paper_and_1_bit_files_load(tmp_path):
    draw(2, mode="RGBA").save(tmp_path / "alpha.png")
    draw(2).save(tmp_path / "flat.png")
    draw(2).convert("1").save(tmp_path / "bits.png")
    flat = tc_frames.load_image(tmp_path / "flat.png")
    assert torch.equal(tc_frames.load_image(tmp_path / "alpha.png", paper=True), flat)
    assert tc_frames.load_image(tmp_path / "alpha.png").mean() < 0.1  # without paper: the black under the alpha
    bits = tc_frames.load_image(tmp_path / "bits.png", paper=True)
    assert bits.shape == flat.shape and set(bits.unique().tolist()) == {0.0, 1.0}


def test_line_art_of_mixed_sizes_or_inverted_is_refused():
    small = torch.ones(1, 3, 32, 32)
    with pytest.raises(InputError, match=r"line-art frames differ in size: a.png is 64x64, b.png 32x32: export every"):
        prepare_line_art([line_art(1), small], ["a.png", "b.png"])
    with pytest.raises(InputError, match=r"line art must be dark lines on light paper, but frame 1 is mostly dark: invert"):
        prepare_line_art(torch.cat([line_art(1), 1 - line_art(1)]))


# ---------------------------------------------------------------------------------------------
# Runs


def test_each_segment_is_interpolate_with_its_keys_line_art_as_sketches_and_seed_plus_i(model, encoder):
    art = prepare_line_art(line_art(9))
    keys = keys_for([0, 4, 8])
    seen = []
    shot = colorize(runner(model, encoder), art, keys, (SIZE, SIZE), ColorizeOptions(seed=10),
                    on_segment=lambda s, f: seen.append(s.index))
    assert shot.shape == (9, 3, SIZE, SIZE) and seen == [0, 1]
    for k, key in keys.items():
        assert torch.equal(shot[k], key[0])  # the colourist's key, bit for bit
    for i, (a, b) in enumerate([(0, 4), (4, 8)]):
        guide = SketchGuide(encoder, sketch_hint(art[a : b + 1], SIZE, SIZE), tc_colorize.DEFAULT_SCALE)
        plain = interpolate(model, tc_frames.to_model(keys[a]), tc_frames.to_model(keys[b]), "a red ball", SAMPLING,
                            frames=b - a + 1, generator=torch.Generator("cpu").manual_seed(10 + i), sketch=guide)
        expected = tc_frames.from_model(plain[0]).transpose(0, 1)
        assert (shot[a + 1 : b] - expected[1:-1]).abs().max() <= 1 / 255
    # The line art steers: other lines, other frames.
    moved = colorize(runner(model, encoder), prepare_line_art(line_art(9).flip(-1)), keys, (SIZE, SIZE),
                     ColorizeOptions(seed=10))
    assert (moved[1:4] - shot[1:4]).abs().max() > 1e-3  # ignoring the hint gives exactly 0


def test_alpha_line_art_colours_exactly_as_flattened_line_art(model, encoder):
    keys = keys_for([0, 4])
    rgba = torch.cat([to_tensor(draw(i, mode="RGBA")) for i in range(5)])
    runs = [colorize(runner(model, encoder), prepare_line_art(art), keys, (SIZE, SIZE)) for art in (rgba, line_art(5))]
    assert torch.equal(runs[0], runs[1])


class Counting:
    """A runner that records what it is asked to do, and can fail on one segment."""

    def __init__(self, inner, fail_on=None):
        self.inner, self.fail_on, self.calls = inner, fail_on, []

    def condition(self, segment, start, end):
        self.calls.append(("condition", segment.index))
        return self.inner.condition(segment, start, end)

    def conditioned(self):
        self.calls.append(("conditioned",))

    def render(self, segment, conditioned, hint, keyframes):
        self.calls.append(("render", segment.index))
        if segment.index == self.fail_on:
            raise FloatingPointError("the decoded video has NaN/inf values")
        return self.inner.render(segment, conditioned, hint, keyframes)


def test_every_segment_is_conditioned_before_any_is_sampled_and_finished_ones_are_skipped(model, encoder):
    art, keys = prepare_line_art(line_art(9)), keys_for([0, 4, 8])
    counting = Counting(runner(model, encoder))
    made = {}
    full = colorize(counting, art, keys, (SIZE, SIZE), on_segment=lambda s, f: made.update({s.index: f}))
    assert counting.calls == [("condition", 0), ("condition", 1), ("conditioned",), ("render", 0), ("render", 1)]
    again = Counting(runner(model, encoder))
    resumed = colorize(again, art, keys, (SIZE, SIZE), finished={0: made[0]})
    assert again.calls == [("condition", 1), ("conditioned",), ("render", 1)]
    assert torch.equal(resumed, full)


def test_a_failing_segment_is_named_and_the_finished_ones_are_kept(model, encoder):
    made = []
    with pytest.raises(FloatingPointError, match=r"^segment 2 \(frames 4-8\): the decoded video has NaN"):
        colorize(Counting(runner(model, encoder), fail_on=1), prepare_line_art(line_art(9)), keys_for([0, 4, 8]),
                 (SIZE, SIZE), on_segment=lambda s, f: made.append(s.index))
    assert made == [0]


def test_single_key_propagates_from_the_key_outwards(model, encoder):
    art = prepare_line_art(line_art(9))
    counting = Counting(runner(model, encoder))
    segments = plan_segments(9, [4], ColorizeOptions(single_key=True, max_segment=3))
    outputs = {}
    shot = colorize(counting, art, keys_for([4]), (SIZE, SIZE), ColorizeOptions(single_key=True, max_segment=3),
                    on_segment=lambda s, f: outputs.update({s.index: f}))
    assert shot.shape == (9, 3, SIZE, SIZE) and torch.isfinite(shot).all()
    assert torch.equal(shot[4], keys_for([4])[4][0])
    # The key is conditioned once; each later run starts on the frame the run before it coloured.
    assert counting.calls[:2] == [("condition", 0), ("conditioned",)] and len(counting.calls) == 2 + len(segments)
    assert segments[1].first == segments[0].last and torch.equal(outputs[1][0], outputs[0][-1])
    assert (shot[:4] - shot[4]).abs().amax() > 0  # the frames before the key were coloured too


def test_line_overlay_multiplies_the_lines_over_the_coloured_frames_only(model, encoder):
    art, keys = prepare_line_art(line_art(5)), keys_for([0, 4])
    plain = colorize(runner(model, encoder), art, keys, (SIZE, SIZE))
    overlaid = colorize(runner(model, encoder), art, keys, (SIZE, SIZE), ColorizeOptions(line_overlay=True))
    assert torch.allclose(overlaid[1:4], plain[1:4] * art[1:4], atol=1e-6)
    assert torch.equal(overlaid[[0, 4]], plain[[0, 4]])


def test_color_match_pulls_drifted_colours_back_to_the_keys():
    key = to_tensor(draw(3, colored=True))[0]
    drifted = (key * 0.7 + 0.2).clamp(0, 1)  # darker and washed out, as long runs drift
    matched = tc_colorize.match_colors(drifted, [(key, 1.0)])
    assert (matched - key).abs().mean() < 0.25 * (drifted - key).abs().mean()


# ---------------------------------------------------------------------------------------------
# The CLI


def _write_shot(folder, n, keys, mode="RGB"):
    (folder / "lines").mkdir(parents=True)
    (folder / "keys").mkdir()
    for i in range(n):
        draw(i, mode=mode).save(folder / "lines" / f"line_{i:03d}.png")
    for k in keys:
        draw(k, colored=True).save(folder / "keys" / f"key_{k:02d}.png")


def _read(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))]).astype(int)


def test_cli_colours_a_three_key_shot_as_interpolate_with_sketches_and_resumes(tmp_path, ckpt, encoder_file, caplog):
    from tooncrafter_core.__main__ import main

    _write_shot(tmp_path, 9, [0, 4, 8], mode="RGBA")
    common = ["--ckpt", str(ckpt), "--steps", "2", "--device", "cpu", "--height", "64", "--width", "64", "--seed", "3",
              "--prompt", "a red ball", "--sketch-encoder", str(encoder_file)]
    out = tmp_path / "out"
    args = ["colorize", "--line-art", str(tmp_path / "lines"), "--keys", str(tmp_path / "keys"), "--out", str(out), *common]
    assert main(args) == 0
    shot = _read(out)
    assert shot.shape == (9, 64, 64, 3)
    for k in (0, 4, 8):
        assert np.array_equal(shot[k], np.asarray(draw(k, colored=True)))
    assert (out / "preview.gif").exists()
    assert Image.open(out / "strip.png").size == (9 * 64, 2 * 64)
    # Segment 2 is `interpolate` from key 4 to key 8 with the same line art as sketches and seed 3 + 1.
    sk = tmp_path / "sk"
    sk.mkdir()
    for j, i in enumerate(range(4, 9)):
        draw(i).save(sk / f"sketch_{j:02d}.png")
    plain = tmp_path / "plain"
    assert main(["interpolate", "--start", str(tmp_path / "keys" / "key_04.png"), "--end",
                 str(tmp_path / "keys" / "key_08.png"), "--frames", "5", "--sketches", str(sk), "--sketch-scale", "1.0",
                 "--out", str(plain), *[a if a != "3" else "4" for a in common]]) == 0
    assert np.abs(_read(plain)[1:4] - shot[5:8]).max() <= 1
    # A stopped run resumes: segment 2 was never recorded, so it runs again, and segment 1 is skipped.
    manifest = json.loads((out / "colorize.json").read_text())
    assert manifest["done"] == [0, 1]
    (out / "colorize.json").write_text(json.dumps({**manifest, "done": [0]}))
    (out / "frame_006.png").unlink()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main([*args, "--resume"]) == 0
    assert "segment 1 (frames 0-4): finished before, skipped (--resume)" in caplog.text
    assert np.array_equal(_read(out), shot)
    assert main([*args, "--resume", "--cfg", "5"]) == 2
    assert "--resume: " in caplog.text and "was made with other settings (cfg)" in caplog.text


def test_cli_refuses_bad_keys_before_reading_the_checkpoint(tmp_path, caplog):
    from tooncrafter_core.__main__ import main

    _write_shot(tmp_path, 9, [0, 4])
    args = ["colorize", "--line-art", str(tmp_path / "lines"), "--keys", str(tmp_path / "keys"), "--out",
            str(tmp_path / "out"), "--ckpt", str(tmp_path / "missing.safetensors")]
    assert main(args) == 2
    assert "the first and last frames must be coloured keys (dual reference), got keys [0, 4]: colour frame 8" in caplog.text
    assert not (tmp_path / "out").exists()
