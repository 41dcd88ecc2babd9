"""One pen digit written as other people, on other pads, would write it: augmentation in stroke space.

A pen trajectory can change in ways an image cannot: the hand's slant, turn and proportions,
its wobble, a stroke ended early or run on, the rate at which the browser samples the pen,
the size the digit is written at and the pen's width. ``writing(strokes, rng)`` draws one
such variant and returns it as the page would hold it (training/render.py: strokes in pad
fractions with the page's sampling, and a pen width), ready to render. ``AUGMENT`` holds the
ranges; each was kept because it raised the held-out writers' accuracy (docs/training.md).
"""
import math

import numpy as np

from training.render import PEN_WIDTH, page_points, place

# Every range is drawn uniformly. Units: the digit's own box (its longer side is 1).
AUGMENT = {
    "size": (0.35, 0.9),       # the digit's longer side on the pad, a fraction of the pad
    "width": (0.06, 0.12),     # the pen, a fraction of the pad (the page's own is PEN_WIDTH)
    "slant": (-0.25, 0.25),    # shear: the top stands right of the foot by this much of the height
    "rotate": (-0.12, 0.12),   # radians, clockwise on screen
    "aspect": (0.8, 1.2),      # width multiplier
    "wobble": (0.0, 0.015),    # amplitude of a slow sine along each stroke
    "ends": 0.3,               # chance that each stroke end is cut short or run on
    "end_length": 0.08,        # by up to this much (of the digit's size)
    "every": (1, 3),           # keep every k-th pen sample, k in this range: slower event rates
    "slash": 0.25,             # chance that a 0 written in one stroke gets a slash through it
}
FIXED = {"size": (0.65, 0.65), "width": (PEN_WIDTH, PEN_WIDTH)}  # no augmentation: the page's pen, one size


def _slash(strokes, rng):
    """A straight stroke through the digit's middle, from above it to below it: the slashed
    zero, which many people write and MNIST lacks. Its lean from upright (to the right, as in
    "/", more often than to the left) and its overhang are drawn at random."""
    points = np.concatenate(strokes)
    lo, hi = points.min(axis=0), points.max(axis=0)
    mid = (lo + hi) / 2 + rng.uniform(-0.05, 0.05, size=2)
    lean = rng.uniform(-0.6, 1.1)  # radians from upright; positive leans right at the top
    direction = np.array([math.sin(lean), -math.cos(lean)])  # towards the top
    half = ((hi - lo) / 2 / np.maximum(np.abs(direction), 1e-6)).min() * rng.uniform(1.0, 1.4)
    top, bottom = mid + direction * half, mid - direction * half
    return strokes + [top + (bottom - top) * np.linspace(0, 1, 9)[:, None]]


def _hand(strokes, rng, slant, rotate, aspect):
    s, r, a = rng.uniform(*slant), rng.uniform(*rotate), rng.uniform(*aspect)
    cos, sin = math.cos(r), math.sin(r)
    out = []
    for pts in strokes:
        x = 0.5 + (pts[:, 0] - 0.5) * a + s * (0.5 - pts[:, 1])
        y = pts[:, 1] - 0.5
        x = x - 0.5
        out.append(np.stack([0.5 + x * cos - y * sin, 0.5 + x * sin + y * cos], axis=1))
    return out


def _wobble(strokes, rng, amount):
    amp = rng.uniform(*amount)
    if amp == 0:
        return strokes
    freq, phase = rng.uniform(0.6, 1.8, size=2), rng.uniform(0, 2 * math.pi, size=2)
    out = []
    for pts in strokes:
        along = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        out.append(pts + amp * np.sin(2 * math.pi * freq * along[:, None] + phase))
    return out


def _ends(strokes, rng, p, length):
    """Each end of each stroke of 3 points or more, with chance ``p``: cut short by up to ``length``
    of arc, or run on straight by up to ``length``."""
    out = []
    for pts in strokes:
        if len(pts) >= 3:
            for end in (0, 1):
                if rng.random() >= p:
                    continue
                pts = pts if end else pts[::-1]
                d = rng.uniform(0, length)
                if rng.random() < 0.5:  # cut: drop the points within d of the end, keep two at least
                    along = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts[::-1], axis=0).T))])
                    drop = min(int(np.searchsorted(along, d)), len(pts) - 2)
                    pts = pts[:len(pts) - drop] if drop else pts
                else:  # run on along the last step's direction
                    step = pts[-1] - pts[-2]
                    norm = float(np.hypot(*step))
                    if norm > 0:
                        pts = np.vstack([pts, pts[-1] + step / norm * d])
                pts = pts if end else pts[::-1]
        out.append(pts)
    return out


def _every(strokes, rng, every):
    k = int(rng.integers(every[0], every[1] + 1))
    if k == 1:
        return strokes
    return [pts if len(pts) <= 2 else np.vstack([pts[::k], pts[-1:]]) if (len(pts) - 1) % k else pts[::k]
            for pts in strokes]


def writing(strokes, rng, config=AUGMENT, label=None):
    """(strokes on the pad as the page keeps them, pen width) for one variant of a pen digit
    (float arrays [k, 2] in its own box, y down) of ``label``, drawn with ``rng`` from
    ``config``'s ranges (AUGMENT; a missing key leaves that aspect as written)."""
    strokes = [np.asarray(s, dtype=np.float64) for s in strokes]
    if label == 0 and len(strokes) == 1 and rng.random() < config.get("slash", 0):
        strokes = _slash(strokes, rng)
    if "slant" in config:
        strokes = _hand(strokes, rng, config["slant"], config["rotate"], config["aspect"])
    if "wobble" in config:
        strokes = _wobble(strokes, rng, config["wobble"])
    if "ends" in config:
        strokes = _ends(strokes, rng, config["ends"], config["end_length"])
    if "every" in config:
        strokes = _every(strokes, rng, config["every"])
    size = rng.uniform(*config["size"])
    margin = 0.03
    room = 1 - 2 * margin - size
    center = 0.5 + rng.uniform(-room / 2, room / 2, size=2) if room > 0 else (0.5, 0.5)
    placed = place(strokes, size, center, margin)
    return [page_points(s) for s in placed], rng.uniform(*config["width"])
