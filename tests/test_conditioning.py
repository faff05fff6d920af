"""CLIP preprocessing against kornia (test-only dependency; the core never imports it)."""

import pytest
import torch

import kornia  # noqa: E402

from tooncrafter_core.conditioning import resize_antialiased  # noqa: E402


@pytest.mark.parametrize("size", [(320, 512), (64, 64), (32, 64), (224, 224), (500, 300)])
def test_resize_matches_kornia_antialiased_bicubic(size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = resize_antialiased(x, (224, 224))
    theirs = kornia.geometry.resize(x, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
