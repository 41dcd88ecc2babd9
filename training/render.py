"""Pen strokes into the model's 28x28 input, exactly as the page and the service make it.

The page (frontend/pad.js: renderStrokes) draws a drawing's strokes on a canvas of
EXPORT_SIZE pixels: white paper, black ink, round caps and joins, each stroke a chain of
quadratic curves through the midpoints of its samples, a one-point stroke a dot as wide as
the pen. It sends that canvas as a lossless 8-bit grey PNG (frontend/png.js), and the
service cuts its ink down to 28x28 (service/ink.py). Here Skia, the library Chromium's
canvas draws with, draws the same path with the same paint, and service/ink.py itself does
the rest: tests/test_render.py draws strokes through the page in Chromium and through this
module and compares the 28x28 inputs.

- ``place``: strokes from their own box onto the pad (fractions of its side), at a size
  and place, as a person writes them;
- ``page_points``: the samples the page keeps of a pen's (frontend/pad.js: MIN_STEP);
- ``render``: the canvas the page sends, as uint8 grey pixels;
- ``to_digit``: the 28x28 input the service makes of it, uint8 (ink 255) as training stores digits.
"""
import numpy as np
import skia
from PIL import Image

from service import contract, ink

EXPORT_SIZE = 280  # frontend/pad.js: EXPORT_SIZE, the side of the canvas the page sends
MIN_STEP = 0.002   # frontend/pad.js: MIN_STEP, in pad sides: closer samples are not kept
PEN_WIDTH = 0.09   # frontend/config.json: strokeWidth, the page's pen, a fraction of the pad


def place(strokes, size, center=(0.5, 0.5), margin=0.03):
    """``strokes`` (float arrays [k, 2], x right and y down, in any unit) mapped onto the pad:
    the longer side of their box becomes ``size`` of the pad, its centre ``center`` (moved in
    so that the drawing stays ``margin`` inside the pad), the aspect ratio kept."""
    points = np.concatenate(strokes)
    lo, hi = points.min(axis=0), points.max(axis=0)
    span = max(float((hi - lo).max()), 1e-9)
    size = min(size, 1 - 2 * margin)
    half = (hi - lo) / span * size / 2
    c = np.clip(np.asarray(center, dtype=np.float64), margin + half, 1 - margin - half)
    mid = (lo + hi) / 2
    return [(np.asarray(s, dtype=np.float64) - mid) / span * size + c for s in strokes]


def page_points(stroke, min_step=MIN_STEP):
    """The samples of one stroke (pad fractions) that the page keeps: the first, then each one
    at least ``min_step`` from the last kept (frontend/pad.js: Pad.move and Pad.up)."""
    kept = [stroke[0]]
    last = stroke[0]
    for p in stroke[1:]:
        if (p[0] - last[0]) ** 2 + (p[1] - last[1]) ** 2 >= min_step * min_step:
            kept.append(p)
            last = p
    return np.asarray(kept)


class Renderer:
    """Draws strokes as frontend/pad.js's renderStrokes does, on one reused Skia surface."""

    def __init__(self, size=EXPORT_SIZE):
        self.size = size
        self.surface = skia.Surface(size, size)
        self.canvas = self.surface.getCanvas()
        self.pixels = np.zeros((size, size, 4), np.uint8)

    def render(self, strokes, width=PEN_WIDTH):
        """The canvas for ``strokes`` (arrays [k, 2] of pad fractions) and a pen ``width`` (a
        fraction of the pad): uint8 grey [size, size], black ink on white."""
        size, canvas = self.size, self.canvas
        line = skia.Paint(AntiAlias=True, Color=skia.ColorBLACK, Style=skia.Paint.kStroke_Style,
                          StrokeWidth=width * size, StrokeCap=skia.Paint.kRound_Cap,
                          StrokeJoin=skia.Paint.kRound_Join)
        dot = skia.Paint(AntiAlias=True, Color=skia.ColorBLACK, Style=skia.Paint.kFill_Style)
        canvas.clear(skia.ColorWHITE)
        for stroke in strokes:
            pts = (np.asarray(stroke, dtype=np.float64) * size).tolist()
            if len(pts) == 1:
                canvas.drawCircle(pts[0][0], pts[0][1], width * size / 2, dot)
                continue
            path = skia.Path()
            path.moveTo(*pts[0])
            for (x, y), (nx, ny) in zip(pts[1:-1], pts[2:]):
                path.quadTo(x, y, (x + nx) / 2, (y + ny) / 2)
            path.lineTo(*pts[-1])
            canvas.drawPath(path, line)
        self.surface.readPixels(skia.ImageInfo.MakeN32Premul(size, size), self.pixels)
        return self.pixels[:, :, 0].copy()  # black on white: every colour channel is the grey


def digits(drawings):
    """The 28x28 inputs (uint8 [N, 28, 28], ink 255) for ``drawings``, (strokes, pen width) pairs
    as ``Renderer.render`` takes them."""
    renderer = Renderer()
    out = np.zeros((len(drawings), contract.SIDE, contract.SIDE), np.uint8)
    for k, (strokes, width) in enumerate(drawings):
        x = to_digit(renderer.render(strokes, width))
        if x is not None:
            out[k] = x
    return out


def to_digit(grey):
    """The service's 28x28 input for a grey canvas (uint8 [h, w], black on white), as uint8
    (ink 255); None for a canvas without ink."""
    h, w = grey.shape
    x = ink.to_input(Image.frombuffer("L", (w, h), np.ascontiguousarray(grey), "raw", "L", 0, 1))
    return None if x is None else contract.to_pixels(x)
