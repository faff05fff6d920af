"""Keyframe sequences and loops in the core and the CLI (the ComfyUI node is in test_comfy_sequence.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_checkpoint
from PIL import Image

from tooncrafter_core import sequences
from tooncrafter_core.errors import InputError
from tooncrafter_core.pipeline import interpolate
from tooncrafter_core.sequences import interpolate_sequence, sequence_length
from tooncrafter_core.settings import SamplingConfig
from tooncrafter_core.weights.checkpoint import load_model

SAMPLING = SamplingConfig(steps=2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt, dtype=torch.float32)


def _keyframes(n: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    patterns = [torch.stack([xx, yy, -xx]), torch.stack([-yy, xx, yy]), torch.stack([xx * yy, -xx, yy]), torch.stack([yy, yy, xx])]
    return 0.8 * torch.stack(patterns[:n])


def _plain(model, a: torch.Tensor, b: torch.Tensor, seed: int, prompt: str = "a ball") -> torch.Tensor:
    """A plain two-keyframe run: (3 t H W)."""
    return interpolate(model, a[None], b[None], prompt, SAMPLING, generator=torch.Generator("cpu").manual_seed(seed))[0]


def test_three_keyframes_give_one_clip_whose_segments_are_plain_runs_with_seed_plus_i(model):
    kf = _keyframes(3)
    t = model.config.frames
    steps = []
    clip = interpolate_sequence(model, kf, ["a ball", "a cat"], SAMPLING, seed=40, callback=lambda i, x, x0: steps.append(i))
    assert clip.shape == (3, sequence_length(3, t), 64, 64) == (3, 2 * (t - 1) + 1, 64, 64)
    assert torch.isfinite(clip).all()
    first, second = _plain(model, kf[0], kf[1], 40, "a ball"), _plain(model, kf[1], kf[2], 41, "a cat")
    assert torch.equal(clip[:, :t], first)
    # Keyframe 2 appears once, at position t-1: the frame the first segment drew for it.
    assert torch.equal(clip[:, t:], second[:, 1:])
    # One progress count over both segments.
    assert steps == list(range(2 * SAMPLING.steps))


def test_a_looped_pair_goes_there_and_back_without_repeating_the_first_keyframe(model):
    kf = _keyframes(2)
    t = model.config.frames
    clip = interpolate_sequence(model, kf, "a ball", SAMPLING, seed=7, loop=True)
    assert clip.shape[1] == sequence_length(2, t, loop=True) == 2 * (t - 1)
    there, back = _plain(model, kf[0], kf[1], 7), _plain(model, kf[1], kf[0], 8)
    assert torch.equal(clip[:, :t], there)
    assert torch.equal(clip[:, t:], back[:, 1:-1])  # its last frame is keyframe 1 again: the clip's start
    assert torch.isfinite(clip).all()


def test_one_segment_can_be_redone_alone(model):
    kf = _keyframes(4)
    t = model.config.frames
    clip = interpolate_sequence(model, kf, "a ball", SAMPLING, seed=100)
    redone = _plain(model, kf[2], kf[3], 102)
    assert torch.equal(clip[:, 2 * (t - 1) + 1 :], redone[:, 1:])  # keyframe 3 itself is segment 2's last frame


def test_sequence_inputs_are_checked_before_anything_runs(model):
    with pytest.raises(InputError, match="at least 2 keyframes, got 1"):
        interpolate_sequence(model, _keyframes(1), "", SAMPLING)
    with pytest.raises(InputError, match="got 3 prompts for 2 segments"):
        interpolate_sequence(model, _keyframes(3), ["a", "b", "c"], SAMPLING)
    with pytest.raises(InputError, match=r"keyframes must be \(n, 3, height, width\)"):
        interpolate_sequence(model, _keyframes(2)[0], "", SAMPLING)
    assert sequences.segment_pairs(3, loop=True) == [(0, 1), (1, 2), (2, 0)]


def _write(folder, names):
    colors = [(250, 40, 40), (40, 200, 40), (40, 40, 250)]
    for name, color in zip(names, colors):
        im = Image.new("RGB", (64, 64), color)
        im.paste((255, 255, 255), (8 + 10 * len(name), 8, 30 + 10 * len(name), 30))
        im.save(folder / name)
    return [str(folder / n) for n in names]


def _cli(ckpt, out, *extra):
    from tooncrafter_core.__main__ import main

    return main(["interpolate", "--ckpt", str(ckpt), "--steps", "2", "--device", "cpu", "--height", "64", "--width", "64",
                 "--seed", "9", "--out", str(out), *extra])


def _frames(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def test_cli_keyframes_and_loop_write_the_documented_frame_counts(ckpt, model, tmp_path):
    files = _write(tmp_path, ["a.png", "bb.png", "ccc.png"])
    t = model.config.frames
    assert _cli(ckpt, tmp_path / "seq", "--keyframes", *files, "--prompts", "one", "two") == 0
    assert len(list((tmp_path / "seq").glob("frame_*.png"))) == 2 * (t - 1) + 1
    assert _cli(ckpt, tmp_path / "loop", "--keyframes", *files[:2], "--loop") == 0
    assert len(list((tmp_path / "loop").glob("frame_*.png"))) == 2 * (t - 1)
    # --start/--end is the two-keyframe sequence: the same frames as --keyframes A B.
    assert _cli(ckpt, tmp_path / "pair", "--start", files[0], "--end", files[1]) == 0
    assert _cli(ckpt, tmp_path / "pair2", "--keyframes", *files[:2]) == 0
    assert np.array_equal(_frames(tmp_path / "pair"), _frames(tmp_path / "pair2"))
    assert np.array_equal(_frames(tmp_path / "loop")[:t], _frames(tmp_path / "pair"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--keyframes", "A"], "at least 2 keyframes, got 1"),
        (["--keyframes", "A", "B", "--start", "A"], "either --keyframes or --start/--end"),
        (["--start", "A"], "give the keyframes"),
        (["--keyframes", "A", "B", "C", "--prompts", "x", "y", "z"], "got 3 prompts for 2 segments"),
    ],
)
def test_cli_sequence_mistakes_are_named_before_the_model_loads(tmp_path, caplog, args, message):
    files = dict(zip("ABC", _write(tmp_path, ["a.png", "bb.png", "ccc.png"])))
    args = [files.get(a, a) for a in args]
    # A checkpoint that does not exist: the error must come from the inputs, before any load.
    assert _cli(tmp_path / "missing.safetensors", tmp_path / "out", *args) == 2
    assert message in caplog.text
