"""Line charts drawn with PIL (training losses, benchmark curves)."""

import numpy as np
import pytest
from PIL import Image

from tooncrafter_core.charts import COLORS, line_chart


def _pixels_of(path, color) -> int:
    return int((np.asarray(Image.open(path).convert("RGB")) == np.array(color)).all(axis=-1).sum())


def test_each_series_is_drawn_in_its_color_and_log_axes_drop_what_they_cannot_show(tmp_path):
    path = line_chart({"a": [(1, 0.5), (10, 0.05), (100, 0.005)], "b": [(2, 1.0), (20, 0.0), (40, 0.2)]},
                      tmp_path / "c.png", "title", "x", "y", log_x=True, log_y=True)
    assert Image.open(path).size == (900, 560)
    assert _pixels_of(path, COLORS[0]) > 100 and _pixels_of(path, COLORS[1]) > 50
    assert _pixels_of(path, COLORS[2]) == 0
    linear = line_chart({"loss": [(i, 1.0 / (i + 1)) for i in range(40)]}, tmp_path / "l.png", "loss", "step", "loss")
    assert _pixels_of(linear, COLORS[0]) > 100


def test_nothing_to_plot_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="nothing to plot"):
        line_chart({"a": [(0, 0.0)]}, tmp_path / "c.png", "t", "x", "y", log_x=True)
