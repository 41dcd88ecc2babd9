"""Handwriting from MNIST: digits turned into pen strokes, to be written on the real page.

- ``mnist_to_strokes``: Zhang-Suen thinning (``skeletonize``), ``trace`` and ``smooth`` turn
  a 28x28 MNIST image into the strokes a pen would draw;
- ``place``: strokes from their own bounding box into pad fractions, at a size and place;
- ``DIGITS``: clearly drawn strokes for each digit, the way people write them;
- ``VARIANTS`` and ``validation_digits``: the handwriting evaluation's ways of writing on
  the pad, and the held-out digits it writes.

The tests and the benchmarks write with these (bench/page.py drives the page).
"""
import math

import numpy as np

from service.contract import scale
from training.data import SAMPLE_DIR, TRAIN_IMAGES, TRAIN_LABELS, read_pair


def place(strokes, size=0.7, center=(0.5, 0.5), margin=0.03):
    """Map strokes from their own bounding box into pad fractions: the longer side becomes
    ``size`` of the pad, centred at ``center`` (moved in if need be, so that the digit stays
    ``margin`` inside the pad, as a person writes it), keeping the aspect ratio."""
    pts = np.concatenate([np.asarray(s, dtype=float) for s in strokes])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = max(float((hi - lo).max()), 1e-6)
    size = min(size, 1 - 2 * margin)
    half = (hi - lo) / span * size / 2
    cx, cy = (float(np.clip(c, margin + h, 1 - margin - h)) for c, h in zip(center, half))
    mid = (lo + hi) / 2
    return [[(cx + (x - mid[0]) / span * size, cy + (y - mid[1]) / span * size)
             for x, y in s] for s in strokes]


def catmull_rom(points, per_segment=6):
    """A smooth curve through ``points`` (centripetal-free, uniform Catmull-Rom), as a denser polyline."""
    p = np.asarray(points, dtype=float)
    p = np.vstack([p[0], p, p[-1]])
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        for t in np.linspace(0, 1, per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    out.append(p[-2])
    return [tuple(q) for q in out]


def densify(points, step=0.03):
    """Straight segments between ``points``, sampled every ``step`` (as a mouse would report them)."""
    out = [tuple(points[0])]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        out += [(x0 + (x1 - x0) * k / n, y0 + (y1 - y0) * k / n) for k in range(1, n + 1)]
    return out


def ellipse(cx, cy, rx, ry, start=-0.5 * math.pi, turns=1.0, n=40):
    """Points on an ellipse, anticlockwise on screen from angle ``start`` (the top by default,
    as most people write a 0) for ``turns`` of a full turn."""
    return [(cx + rx * math.cos(start - 2 * math.pi * turns * k / n),
             cy + ry * math.sin(start - 2 * math.pi * turns * k / n)) for k in range(n + 1)]


# Each digit as strokes in a unit box, in the order and direction people usually write them.
DIGITS = {
    0: [ellipse(0.5, 0.5, 0.3, 0.46, turns=1.03)],
    1: [densify([(0.56, 0.02), (0.44, 0.98)])],
    2: [catmull_rom([(0.2, 0.27), (0.33, 0.08), (0.55, 0.03), (0.74, 0.13), (0.76, 0.33),
                     (0.6, 0.56), (0.38, 0.76), (0.17, 0.96)])
        + densify([(0.17, 0.96), (0.85, 0.94)])[1:]],
    3: [catmull_rom([(0.2, 0.14), (0.42, 0.03), (0.66, 0.07), (0.74, 0.24), (0.62, 0.4),
                     (0.4, 0.48), (0.64, 0.55), (0.78, 0.72), (0.7, 0.9), (0.46, 0.97), (0.2, 0.88)])],
    4: [densify([(0.28, 0.02), (0.16, 0.6), (0.86, 0.6)]), densify([(0.66, 0.05), (0.64, 0.98)])],
    5: [densify([(0.3, 0.05), (0.26, 0.46)]) + catmull_rom([(0.26, 0.46), (0.5, 0.38), (0.72, 0.48), (0.78, 0.7),
                                                            (0.66, 0.9), (0.44, 0.97), (0.2, 0.88)])[1:],
        densify([(0.3, 0.05), (0.78, 0.04)])],
    6: [catmull_rom([(0.7, 0.03), (0.46, 0.2), (0.28, 0.45), (0.22, 0.7), (0.32, 0.92), (0.52, 0.97),
                     (0.72, 0.86), (0.76, 0.67), (0.62, 0.53), (0.42, 0.53), (0.25, 0.66)])],
    7: [densify([(0.14, 0.06), (0.86, 0.06), (0.42, 0.98)])],
    8: [catmull_rom([(0.7, 0.14), (0.5, 0.03), (0.3, 0.12), (0.32, 0.32), (0.5, 0.46), (0.72, 0.62),
                     (0.74, 0.84), (0.5, 0.97), (0.26, 0.84), (0.28, 0.62), (0.5, 0.46), (0.68, 0.32),
                     (0.7, 0.14)])],
    9: [catmull_rom([(0.72, 0.22), (0.56, 0.05), (0.33, 0.08), (0.24, 0.28), (0.38, 0.46), (0.6, 0.42),
                     (0.72, 0.22)]) + densify([(0.72, 0.22), (0.7, 0.55), (0.64, 0.98)])[1:]],
}



def skeletonize(ink):
    """Zhang-Suen thinning of a boolean image (True = ink) to a one-pixel-wide skeleton.

    T. Y. Zhang and C. Y. Suen, "A fast parallel algorithm for thinning digital patterns",
    CACM 27(3), 1984. Each pass removes, in two sub-steps, the boundary pixels whose removal
    keeps the shape connected and does not shorten its ends.
    """
    img = np.pad(np.asarray(ink, dtype=bool), 1).astype(np.uint8)
    while True:
        changed = False
        for step in (0, 1):
            # Neighbours P2..P9, clockwise from north.
            p = [np.roll(np.roll(img, dy, 0), dx, 1)
                 for dy, dx in ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))]
            b = sum(p)
            a = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)).astype(np.uint8) for i in range(8))
            p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
            if step == 0:
                cond = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                cond = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (img == 1) & (b >= 2) & (b <= 6) & (a == 1) & cond
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


_NEIGHBOURS = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]


def trace(skeleton):
    """Walk a skeleton into polylines of (row, col) pixels, the way a pen would cover it.

    Each walk starts at an end (a pixel with one neighbour) when there is one, else anywhere
    (a closed loop, as in a 0), and keeps going in the direction it was heading. A walk that
    ends next to pixels already drawn is joined to them, so loops close and branches touch.
    """
    remaining = {tuple(p) for p in np.argwhere(skeleton)}
    all_pixels = set(remaining)

    def neighbours(p, pool):
        return [(p[0] + dy, p[1] + dx) for dy, dx in _NEIGHBOURS if (p[0] + dy, p[1] + dx) in pool]

    paths = []
    while remaining:
        start = min(remaining, key=lambda p: (len(neighbours(p, remaining)) != 1, p))
        path = [start]
        remaining.discard(start)
        while True:
            options = neighbours(path[-1], remaining)
            if not options:
                break
            if len(path) >= 2:
                # Keep heading the same way: smallest turn from the last step.
                hy, hx = path[-1][0] - path[-2][0], path[-1][1] - path[-2][1]
                options.sort(key=lambda q: -((q[0] - path[-1][0]) * hy + (q[1] - path[-1][1]) * hx)
                             / math.hypot(q[0] - path[-1][0], q[1] - path[-1][1]))
            path.append(options[0])
            remaining.discard(options[0])
        # Join each end to a drawn pixel it touches (closing loops, meeting junctions).
        drawn = all_pixels - remaining
        for at_end in (True, False):
            end, near = (path[-1], path[-3:]) if at_end else (path[0], path[:3])
            touching = [q for q in neighbours(end, drawn) if q not in near]
            if touching:
                if at_end:
                    path.append(touching[0])
                else:
                    path.insert(0, touching[0])
        paths.append(path)
    return paths


def smooth(path, window=5):
    """A moving average along a pixel path (ends kept), so a staircase of pixels becomes a pen line."""
    pts = np.asarray(path, dtype=float)
    if len(pts) < 3:
        return pts
    k = min(window, len(pts) if len(pts) % 2 else len(pts) - 1)
    padded = np.vstack([np.repeat(pts[:1], k // 2, axis=0), pts, np.repeat(pts[-1:], k // 2, axis=0)])
    kernel = np.ones(k) / k
    out = np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(2)], axis=1)
    out[0], out[-1] = pts[0], pts[-1]
    return out


def mnist_to_strokes(image, upscale=4, threshold=0.5, step=4):
    """Pen strokes for a 28x28 MNIST image (uint8, ink high): upscale, threshold, thin, trace,
    smooth, and keep every ``step``-th point. Returns [[(x, y), ...], ...] in pixels of the
    upscaled image, strokes longest first; [] for an image without ink."""
    from PIL import Image

    big = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((28 * upscale,) * 2, Image.BILINEAR)
    ink = scale(big) >= threshold
    strokes = []
    for path in trace(skeletonize(ink)):
        pts = smooth(path)
        keep = list(range(0, len(pts), step))
        if keep[-1] != len(pts) - 1:
            keep.append(len(pts) - 1)
        strokes.append([(float(p[1]), float(p[0])) for p in pts[keep]])  # (row, col) -> (x, y)
    # Drop specks left by thinning when there is a real stroke to draw.
    long_enough = [s for s in strokes if len(s) > 2]
    strokes = long_enough or strokes
    return sorted(strokes, key=len, reverse=True)



VARIANTS = [
    {"name": "medium", "size": 0.65, "center": (0.5, 0.5), "stroke": 0.09},
    {"name": "large-thin", "size": 0.85, "center": (0.5, 0.5), "stroke": 0.05},
    {"name": "small-corner", "size": 0.35, "center": (0.3, 0.3), "stroke": 0.075},
    {"name": "offset-thick", "size": 0.6, "center": (0.6, 0.58), "stroke": 0.12},
    {"name": "tall-low", "size": 0.75, "center": (0.45, 0.6), "stroke": 0.065},
]


def traced_drawings(images, offset=0):
    """``images`` (MNIST digits) traced into pen strokes and placed in VARIANTS, round robin
    from the ``offset``-th: dicts of ``strokes`` (pad fractions) and pen ``width``, the
    input of bench/page.py's ``render_canvases``."""
    out = []
    for k, image in enumerate(images):
        variant = VARIANTS[(k + offset) % len(VARIANTS)]
        out.append({"strokes": place(mnist_to_strokes(image), variant["size"], variant["center"]),
                    "width": variant["stroke"]})
    return out


def validation_digits(count=1000, every=1):
    """The held-out MNIST digits: the last ``count`` of training/sample (training never sees
    them), every ``every``-th one. Returns (images uint8 [n, 28, 28], labels int [n], indices)."""
    images, labels = read_pair(SAMPLE_DIR, TRAIN_IMAGES, TRAIN_LABELS)
    indices = np.arange(len(images) - count, len(images))[::every]
    return images[indices], labels[indices].astype(int), indices
