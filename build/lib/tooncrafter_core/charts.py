"""Line charts as PNG files, drawn with PIL (no plotting library at run time): training losses,
error curves of the benchmarks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from PIL import Image, ImageDraw

COLORS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
MARGIN = (70, 40, 190, 50)  # left, top, right (legend), bottom


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        steps = (1, 2, 5) if len(decades) <= 4 else (1,)
        ticks = [m * 10.0**e for e in decades for m in steps]
        below = [t for t in ticks if t <= lo * (1 + 1e-9)]
        above = [t for t in ticks if t >= hi * (1 - 1e-9)]
        return [t for t in ticks if (below and t >= below[-1]) and (above and t <= above[0])]
    step = 10 ** math.floor(math.log10((hi - lo) / 4 or 1))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= 6:
            step *= mult
            break
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2)]


def _label(value: float, log: bool) -> str:
    return f"{value:g}" if log else f"{value:.4g}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    log_y: bool = False,
    size: tuple[int, int] = (900, 560),
) -> Path:
    """One line with markers per named series of (x, y) points; non-positive values are left out of
    log axes."""
    points = {
        name: [(x, y) for x, y in pts if (x > 0 or not log_x) and (y > 0 or not log_y) and math.isfinite(y)]
        for name, pts in series.items()
    }
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    if not xs:
        raise ValueError(f"nothing to plot in {title!r}")
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)  # noqa: E731
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)  # noqa: E731
    x_ticks, y_ticks = _ticks(min(xs), max(xs), log_x), _ticks(min(ys), max(ys), log_y)
    x0, x1 = fx(min(min(xs), x_ticks[0])), fx(max(max(xs), x_ticks[-1]))
    y0, y1 = fy(min(min(ys), y_ticks[0])), fy(max(max(ys), y_ticks[-1]))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    w, h = size
    left, top, right, bottom = MARGIN
    plot_w, plot_h = w - left - right, h - top - bottom

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (fx(x) - x0) / (x1 - x0) * plot_w, top + (1 - (fy(y) - y0) / (y1 - y0)) * plot_h

    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    for t in x_ticks:
        if x0 <= fx(t) <= x1:
            px, _ = at(t, y_ticks[0])
            d.line([(px, top), (px, top + plot_h)], fill=(230, 230, 230))
            d.text((px - 12, top + plot_h + 6), _label(t, log_x), fill="black")
    for t in y_ticks:
        if y0 <= fy(t) <= y1:
            _, py = at(x_ticks[0], t)
            d.line([(left, py), (left + plot_w, py)], fill=(230, 230, 230))
            d.text((6, py - 6), _label(t, log_y), fill="black")
    d.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    d.text((left, 6), title, fill="black")
    d.text((left + plot_w // 2 - 3 * len(xlabel), h - 22), xlabel, fill="black")
    d.text((left, top - 16), ylabel, fill="black")
    for i, (name, pts) in enumerate(points.items()):
        color = COLORS[i % len(COLORS)]
        xy = [at(x, y) for x, y in sorted(pts)]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        for px, py in xy:
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        ly = top + 10 + 18 * i
        d.line([(w - right + 12, ly + 6), (w - right + 36, ly + 6)], fill=color, width=3)
        d.text((w - right + 42, ly), name, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path
