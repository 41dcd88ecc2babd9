"""The bundled pen digits: 7,522 digits written with a pen on a tablet by 150 writers (UNIPEN).

``load()`` reads training/unipen/digits.npz (written by training/make_unipen.py; the
README beside it gives the source, the license and the attribution) into PenDigits:
every digit as its pen strokes in the order written, each stroke a float32 array of
(x, y) points in the digit's own box (the longer side 0..1, y down). ``split()`` holds out
a fixed share of the writers, by a plain hash of the writer (nobody can add a writer to
bundled data, so no secret key is needed), so no writer is on both sides, in every run alike.
"""
import dataclasses
import hashlib
import os

import numpy as np

from training import render

PEN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unipen", "digits.npz")
GRID = 255  # points are stored rounded to this grid over the digit's longer side
HOLDOUT_SHARE = 0.2  # of the writers: the pen validation set (pen_val)
# How pen_val writes the held-out digits on the pad, round robin: (the digit's longer side
# and its centre, in pad fractions; the pen's width). The handwriting evaluation's ways
# (bench/handwriting.py: VARIANTS): the page's pen on a mid-sized digit, and larger,
# smaller, thinner and thicker.
VAL_WAYS = [(0.65, (0.5, 0.5), 0.09), (0.85, (0.5, 0.5), 0.05), (0.35, (0.3, 0.3), 0.075),
            (0.6, (0.6, 0.58), 0.12), (0.75, (0.45, 0.6), 0.065)]


@dataclasses.dataclass
class PenDigits:
    """Pen digits: ``strokes[i]`` is digit i's list of float32 [k, 2] arrays, ``labels`` uint8
    [N], ``writers`` the writer of each digit (str array)."""

    strokes: list
    labels: np.ndarray
    writers: np.ndarray

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        return PenDigits([self.strokes[i] for i in indices], self.labels[indices], self.writers[indices])


def load(path=PEN_FILE):
    """PenDigits from ``path``, a .npz holding ``labels`` uint8 [N], ``writers`` uint16 [N] (an index
    into ``writer_names``), ``strokes_per_digit`` uint8 [N], ``points_per_stroke`` uint16 [S], and
    ``deltas`` uint8 [2, P]: every point's x and y as its step from the point before in its stroke
    (the first point's from 0), modulo 256, on the 0..GRID grid."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    sums = np.cumsum(arrays["deltas"].astype(np.int64), axis=1)
    starts = np.concatenate([[0], np.cumsum(arrays["points_per_stroke"].astype(np.int64))])
    before = np.concatenate([np.zeros((2, 1), np.int64), sums], axis=1)[:, starts[:-1]]
    points = ((sums - np.repeat(before, arrays["points_per_stroke"], axis=1)) % 256).T.astype(np.float32) / GRID
    strokes = np.split(points, starts[1:-1])
    per_digit = np.concatenate([[0], np.cumsum(arrays["strokes_per_digit"].astype(np.int64))])
    digits = [strokes[a:b] for a, b in zip(per_digit[:-1], per_digit[1:])]
    return PenDigits(digits, arrays["labels"], arrays["writer_names"][arrays["writers"]])


def held_out(writer, share=HOLDOUT_SHARE):
    """Whether ``writer``'s digits are held out: a fixed hash of the writer's name."""
    return int.from_bytes(hashlib.sha256(writer.encode()).digest()[:8], "big") < share * 2 ** 64


def split(digits, share=HOLDOUT_SHARE):
    """(training digits, held-out digits): the writers ``held_out`` by their hash go to the second."""
    hold = np.array([held_out(str(w), share) for w in digits.writers], dtype=bool)
    return digits.subset(np.flatnonzero(~hold)), digits.subset(np.flatnonzero(hold))


def val_drawings(digits, ways=VAL_WAYS):
    """``digits`` written on the pad in ``ways``, round robin: (strokes as the page keeps them,
    pen width) pairs, for training/render.py (the pen_val images) and for the page itself (the
    pen benchmark)."""
    out = []
    for k, strokes in enumerate(digits.strokes):
        size, center, width = ways[k % len(ways)]
        out.append(([render.page_points(s) for s in render.place(strokes, size, center)], width))
    return out


def load_sets(log=print):
    """(training PenDigits, (pen_val images uint8 [N, 28, 28], labels)): the bundled pen digits
    split by writer, the held-out writers' digits written in VAL_WAYS and rendered as the page
    renders them."""
    train, held = split(load())
    val = render.digits(val_drawings(held)), held.labels
    log(f"pen: {len(train):,} digits by {len(set(train.writers))} writers for training, "
        f"{len(held):,} by {len(set(held.writers))} other writers held out as pen_val (training/unipen)")
    return train, val
