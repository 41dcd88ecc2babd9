"""bench/styles.py: synthetic handwriting in the styles MNIST lacks, by seeded writers.

Fast checks of the strokes themselves (no browser, no service): writers are reproducible
and distinct, train and eval writers never coincide, every writing is a well-formed set of
pen strokes in the unit box, the styles really have what their names say (an open 0's gap
wider than the pen, a 1's flag standing out from its stem), and a writing rasterized as
the pad would draw it has ink.
"""
import dataclasses
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from bench.styles import (CORRECTION_ITEMS, EVAL_ITEMS, EVAL_SEED, STYLES, TRAIN_SEED, drawings, label, pen_width,
                          sample, write, writers)

WRITERS = writers(30, EVAL_SEED)


def hand(writer):
    """A writer's parameters without the id: what makes two writers write differently."""
    return tuple(v for k, v in dataclasses.asdict(writer).items() if k != "id")


def dense(stroke, step=0.005):
    """A polyline sampled every ``step``, so distances between strokes are distances between lines."""
    out = [np.asarray(stroke[0], dtype=float)]
    for a, b in zip(np.asarray(stroke[:-1], dtype=float), np.asarray(stroke[1:], dtype=float)):
        n = max(1, math.ceil(np.hypot(*(b - a)) / step))
        out += [a + (b - a) * t for t in np.arange(1, n + 1) / n]
    return np.array(out)


def closest(a, b):
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2).min()))


def test_writers_are_reproducible_and_distinct():
    assert writers(12, TRAIN_SEED) == writers(12, TRAIN_SEED)
    some = writers(12, TRAIN_SEED)
    assert len({w.id for w in some}) == len({hand(w) for w in some}) == 12
    assert all(0.06 <= w.width <= 0.11 for w in some)
    # The same writer writes an item differently each time.
    assert write("1-flag", some[0], 0) != write("1-flag", some[0], 1)
    assert write(3, some[0], 0) == write(3, some[0], 0)


def test_train_and_eval_writers_are_disjoint():
    train, evaluate = writers(200, TRAIN_SEED), writers(200, EVAL_SEED)
    assert not {w.id for w in train} & {w.id for w in evaluate}
    assert not {hand(w) for w in train} & {hand(w) for w in evaluate}


@pytest.mark.parametrize("item", EVAL_ITEMS)
def test_every_writing_is_strokes_in_the_unit_box(item):
    for w in WRITERS:
        for k in range(2):
            strokes = write(item, w, k)
            assert strokes and all(len(s) >= 2 for s in strokes)
            pts = np.concatenate([np.asarray(s, dtype=float) for s in strokes])
            assert pts.shape[1] == 2 and np.isfinite(pts).all()
            assert pts.min() >= -1e-9 and pts.max() <= 1 + 1e-9
            # Fitted to the box: its longer side spans it.
            assert max(pts.max(axis=0) - pts.min(axis=0)) == pytest.approx(1.0)


def test_an_open_zero_leaves_a_gap_wider_than_the_pen():
    for w in WRITERS:
        for k in range(3):
            (stroke,) = write("0-open", w, k)
            line, pen = dense(stroke), pen_width("0-open", w, k)
            tenth = len(line) // 10
            assert closest(line[:tenth], line[-tenth:]) > pen, (w.id, k)


def test_a_zero_in_two_strokes_has_strokes_that_do_not_meet():
    for w in WRITERS:
        for k in range(3):
            left, right = write("0-two-strokes", w, k)
            assert closest(dense(left), dense(right)) > pen_width("0-two-strokes", w, k), (w.id, k)


@pytest.mark.parametrize("style", ["1-flag", "1-flag-base"])
def test_a_flagged_one_has_its_flag(style):
    for w in WRITERS:
        for k in range(3):
            strokes = write(style, w, k)
            stem = np.asarray(strokes[0], dtype=float)
            top = stem[stem[:, 1].argmin()]
            tip, foot = stem[0], stem[-1]
            # The stroke starts at the flag's tip: below the top, left of the stem, and
            # further from the stem's line than the pen is wide.
            along = (foot - top) / np.hypot(*(foot - top))
            off = (tip - top)[0] * along[1] - (tip - top)[1] * along[0]
            assert tip[1] > top[1] and off < -pen_width(style, w, k), (w.id, k)
            if style == "1-flag-base":
                bar = np.asarray(strokes[1], dtype=float)
                assert np.ptp(bar[:, 0]) > 3 * pen_width(style, w, k) and bar[:, 1].min() > 0.8


def rasterize(drawing, side=280):
    """The drawing as the pad draws it (a round pen, black on white, at the export size), with Pillow."""
    im = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(im)
    width = drawing["width"] * side
    for stroke in drawing["strokes"]:
        pts = [(x * side, y * side) for x, y in stroke]
        draw.line(pts, fill=0, width=round(width), joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=0)
    return im


def test_writings_on_the_pad_have_ink_inside_it():
    for d in drawings(WRITERS[:5], EVAL_ITEMS):
        pts = np.concatenate([np.asarray(s, dtype=float) for s in d["strokes"]])
        assert pts.min() >= 0 and pts.max() <= 1
        small = np.asarray(rasterize(d).resize((28, 28), Image.BOX))
        assert (small < 128).sum() >= 8, d["item"]


def enclosed_paper(im, side=70):
    """Pixels of paper the ink closes in (at ``side`` x ``side``): what paper reached from
    the border, a step at a time, never reaches. Box-downscaled first, so specks Pillow
    leaves between the segments of a wide line vanish."""
    paper = np.asarray(im.resize((side, side), Image.BOX)) >= 128
    reached = np.zeros_like(paper)
    reached[[0, -1], :], reached[:, [0, -1]] = paper[[0, -1], :], paper[:, [0, -1]]
    while True:
        grown = reached.copy()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= paper
        if (grown == reached).all():
            return int((paper & ~reached).sum())
        reached = grown


def test_open_zeros_on_the_pad_close_in_no_paper():
    for d in drawings(WRITERS, ["0-open", "0-two-strokes"]):
        assert enclosed_paper(rasterize(d)) == 0, (d["item"], d["writer"])
    # The same writers' usual 0s are closed.
    assert all(enclosed_paper(rasterize(d)) > 100 for d in drawings(WRITERS, [0]))


def test_corrections_cover_every_digit_in_different_writings():
    train = writers(40, TRAIN_SEED)
    chosen = sample(train, CORRECTION_ITEMS, 400)
    assert chosen == sample(train, CORRECTION_ITEMS, 400)
    assert len(chosen) == 400 and {d["label"] for d in chosen} == set(range(10))
    assert len({(d["writer"], d["item"], d["k"]) for d in chosen}) == 400
    assert {d["writer"] for d in chosen} == {w.id for w in train}
    assert set(STYLES) <= {d["item"] for d in chosen}
    assert all(d["label"] == label(int(d["item"]) if d["item"].isdigit() else d["item"]) for d in chosen)
