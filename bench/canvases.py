"""The canvas PNGs the serving benchmarks post (``--canvases``): name -> function(n) giving n PNGs.

- ``frontend`` (the default): held-out MNIST digits traced into pen strokes, written in the
  handwriting evaluation's sizes, positions and pen widths, rendered by the page's own
  pad.js in Chromium and encoded by its png.js, exactly as the page sends them (8-bit grey,
  black on white, about 3.2 kB);
- ``frontend-rgba``: the same drawings as the canvas's own RGBA PNG (about 8.8 kB), as a
  browser without CompressionStream sends them;
- ``drawn``: Pillow-drawn random strokes on a transparent canvas (about 1.6 kB).
"""
import io
import random

from PIL import Image, ImageDraw

from bench.handwriting import validation_digits
from bench.page import handwriting_canvases


def frontend_canvases(n, rgba=False):
    images, _ = validation_digits(count=n)[:2]
    return handwriting_canvases(images, rgba)


def drawn_canvases(n, seed=0):
    """``n`` 280x280 RGBA PNGs drawn and encoded by Pillow: a few random pen strokes each,
    black on transparent. Pillow's encoder compresses harder than Chromium's, and its PNGs
    take longer to decode."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        for _ in range(rng.randint(1, 3)):
            points = [(rng.randint(50, 230), rng.randint(40, 240)) for _ in range(rng.randint(2, 6))]
            d.line(points, fill=(0, 0, 0, 255), width=rng.randint(14, 22), joint="curve")
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


CANVASES = {"frontend": frontend_canvases, "frontend-rgba": lambda n: frontend_canvases(n, rgba=True),
            "drawn": drawn_canvases}
