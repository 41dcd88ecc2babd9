"""The training renderer draws pen strokes exactly as the page does: compared in the real Chromium.

Drawings (bundled pen digits written in pen_val's ways and in augmented variants, a tap
and a two-point stroke) are rendered by the page's own frontend/pad.js and encoded by its
png.js in Chromium (bench/page.py: render_canvases), and cut down to 28x28 by the
service's preprocessing; the same strokes go through training/render.py (Skia, then
service/ink.py). The 28x28 inputs may differ by at most TOLERANCE of 255 in any pixel.
Measured on 1,241 held-out digits, the two were identical in every pixel and the model
read the same digit in all of them (docs/benchmarks.md, "Pen digits through the page").
"""
import json
import os
import re

import numpy as np
import pytest

from bench.page import FRONTEND_DIR, render_canvases
from service import contract, png, preprocess
from training import pen, render, stroke_augment

TOLERANCE = 2  # of 255, in any pixel of the 28x28 input: far below what moves a reading


def test_the_renderers_constants_are_the_pages():
    with open(os.path.join(FRONTEND_DIR, "pad.js")) as f:
        pad = f.read()
    with open(os.path.join(FRONTEND_DIR, "config.json")) as f:
        config = json.load(f)
    assert int(re.search(r"export const EXPORT_SIZE = (\d+);", pad).group(1)) == render.EXPORT_SIZE
    assert float(re.search(r"const MIN_STEP = ([\d.]+);", pad).group(1)) == render.MIN_STEP
    assert config["strokeWidth"] == render.PEN_WIDTH


def drawings():
    """Pen digits of every class in pen_val's ways and in augmented variants, a tap (a one-point
    stroke beside a line) and a two-point stroke."""
    digits = pen.load()
    picks = np.concatenate([np.flatnonzero(digits.labels == d)[:8] for d in range(10)])
    some = digits.subset(picks)
    out = pen.val_drawings(some)
    rng = np.random.default_rng(0)
    out += [stroke_augment.writing(s, rng) for s in some.strokes]
    out += [([np.array([[0.5, 0.3]]), np.array([[0.3, 0.5], [0.7, 0.8]])], render.PEN_WIDTH),
            ([np.array([[0.2, 0.2], [0.8, 0.7]])], 0.05)]
    return out


@pytest.mark.slow  # starts Chromium
def test_strokes_rendered_for_training_give_the_pages_28x28_inputs():
    cases = drawings()
    pngs = render_canvases([{"strokes": [s.tolist() for s in strokes], "width": width} for strokes, width in cases])
    renderer = render.Renderer()
    worst, identical = 0, 0
    for (strokes, width), data in zip(cases, pngs):
        page_canvas = png.canvas_pixels(data, png.header(data))
        ours = renderer.render(strokes, width)
        # The canvases themselves: Chromium's Skia and ours antialias alike, pixel for pixel
        # but for a rare edge pixel.
        assert (page_canvas != ours).mean() < 1e-3
        page_input = contract.to_pixels(preprocess.preprocess(data, preprocess.Limits(10 ** 6)))
        diff = np.abs(page_input.astype(int) - render.to_digit(ours).astype(int)).max()
        worst, identical = max(worst, int(diff)), identical + (diff == 0)
    assert worst <= TOLERANCE, f"a 28x28 input differs by {worst}/255 from the page's"
    assert identical >= 0.95 * len(cases), f"only {identical} of {len(cases)} inputs are identical to the page's"
