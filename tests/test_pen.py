"""The bundled pen digits, their split by writer, their augmentation and the epoch mix (no browser, no Ray).

The page-equality of the renderer is tests/test_render.py's; here the parts around it: the
bundle reads back what the README says it holds, training/make_unipen.py writes it exactly
and deterministically, the split keeps every writer on one side, a variant is reproducible
and stays on the pad, and an epoch's mix is the same for every rank and resume.
"""
import gzip
import json

import numpy as np
import pytest

from service import ink
from training import make_unipen, pen, render, stroke_augment
from training.pen import held_out
from training.mix import MixedDigits, pen_count

# training/unipen/README.md
PER_CLASS = [730, 842, 785, 735, 785, 726, 707, 761, 731, 720]


@pytest.fixture(scope="module")
def digits():
    return pen.load()


def test_the_bundle_holds_the_readmes_digits_each_in_its_own_box(digits):
    assert len(digits) == 7522 and len(set(digits.writers)) == 150
    assert np.bincount(digits.labels, minlength=10).tolist() == PER_CLASS
    for strokes in digits.strokes[::50]:
        points = np.concatenate(strokes)
        assert points.min() == 0 and points.max() == 1  # the longer side spans the box
        assert all(s.dtype == np.float32 and s.ndim == 2 and s.shape[1] == 2 and len(s) for s in strokes)


def test_the_split_keeps_each_writer_on_one_side_and_holds_out_by_the_writers_hash(digits):
    train, held = pen.split(digits)
    assert len(train) + len(held) == len(digits)
    assert not set(train.writers) & set(held.writers)
    assert all(held_out(str(w)) for w in set(held.writers)) and not any(held_out(str(w)) for w in set(train.writers))
    assert 0.1 < len(set(held.writers)) / 150 < 0.3
    assert np.bincount(held.labels, minlength=10).min() >= 100  # every digit scored on enough writings
    again, _ = pen.split(pen.load())
    assert np.array_equal(again.labels, train.labels) and list(again.writers) == list(train.writers)


def test_make_unipen_writes_the_points_back_within_half_a_grid_step_and_byte_for_byte_alike(tmp_path):
    rows = [{"label": "7", "writer": "abc/w1", "source": "x",
             "strokes": [[[0, 0], [0, 0], [300, 5], [150, 600]], [[100, 300]]]},
            {"label": "1", "writer": "abc/w2", "source": "y", "strokes": [[[10, 10], [12, 400], [12.5, 800]]]}]
    source = tmp_path / "in.jsonl.gz"
    with gzip.open(source, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("a.npz", "b.npz"):
        make_unipen.write_npz(tmp_path / name, make_unipen.encode(rows))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = pen.load(tmp_path / "a.npz")
    assert back.labels.tolist() == [7, 1] and back.writers.tolist() == ["abc/w1", "abc/w2"]
    for row, strokes in zip(rows, back.strokes):
        points = np.concatenate([np.asarray(s, float) for s in row["strokes"]])
        lo, span = points.min(axis=0), (points.max(axis=0) - points.min(axis=0)).max()
        originals = [np.asarray(s, float) for s in row["strokes"]]
        # The repeated point is dropped; every other point comes back within half a step of 255.
        assert [len(s) for s in strokes] == [len(np.unique(o, axis=0)) for o in originals]
        for original, decoded in zip(originals, strokes):
            unique = np.unique(original, axis=0)[np.argsort(np.unique(original, axis=0, return_index=True)[1])]
            assert np.abs((unique - lo) / span - decoded).max() <= 0.5 / pen.GRID + 1e-6


def test_the_page_keeps_a_sample_only_a_min_step_from_the_last_it_kept():
    step = render.MIN_STEP
    stroke = np.array([[0.5, 0.5], [0.5 + step / 2, 0.5], [0.5 + step, 0.5], [0.5 + step * 1.5, 0.5],
                       [0.5 + 2.2 * step, 0.5]])
    assert render.page_points(stroke).tolist() == stroke[[0, 2, 4]].tolist()
    assert render.page_points(np.array([[0.2, 0.2], [0.2, 0.2]])).tolist() == [[0.2, 0.2]]  # a tap: a dot


def test_a_variant_is_reproducible_stays_on_the_pad_and_the_fixed_one_is_the_pages_pen(digits):
    strokes = digits.strokes[3]
    a = stroke_augment.writing(strokes, np.random.default_rng(1))
    b = stroke_augment.writing(strokes, np.random.default_rng(1))
    c = stroke_augment.writing(strokes, np.random.default_rng(2))
    assert a[1] == b[1] and all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1] != c[1]
    for k in range(200):
        placed, width = stroke_augment.writing(digits.strokes[k], np.random.default_rng(k))
        points = np.concatenate(placed)
        assert points.min() >= 0.03 - 1e-9 and points.max() <= 0.97 + 1e-9
        assert stroke_augment.AUGMENT["width"][0] <= width <= stroke_augment.AUGMENT["width"][1]
    placed, width = stroke_augment.writing(strokes, np.random.default_rng(0), stroke_augment.FIXED)
    points = np.concatenate(placed)
    assert width == render.PEN_WIDTH and abs((points.max(axis=0) - points.min(axis=0)).max() - 0.65) < 1e-9


def test_a_rendered_digit_is_the_services_input_and_a_blank_canvas_has_none(digits):
    renderer = render.Renderer()
    assert render.to_digit(renderer.render([], 0.09)) is None
    strokes, width = pen.val_drawings(digits.subset(np.arange(1)))[0]
    x = render.to_digit(renderer.render(strokes, width))
    assert x.dtype == np.uint8 and x.shape == (28, 28) and x.max() == 255
    ys, xs = np.nonzero(x)
    assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 == ink.BOX  # fitted to MNIST's 20-pixel box
    mass = x.astype(float) / x.sum()
    cy, cx = (mass.sum(axis=1) * np.arange(28)).sum(), (mass.sum(axis=0) * np.arange(28)).sum()
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_an_epochs_mix_is_the_same_on_every_rank_and_resume_and_new_each_epoch(digits):
    stored_x, stored_y = np.zeros((30, 28, 28), np.uint8), np.arange(30, dtype=np.uint8) % 10
    train = digits.subset(np.arange(12))
    assert pen_count(30, 0.2) == 8 and pen_count(30, 0) == 0
    one = MixedDigits(stored_x, stored_y, train.strokes, train.labels, count=20, seed=5)
    two = MixedDigits(stored_x, stored_y, train.strokes, train.labels, count=20, seed=5)
    assert len(one) == 50
    assert int(one[3][1]) == 3 and one[3][0].shape == (1, 28, 28)
    items = [one[i] for i in range(30, 50)]
    assert all(torch_equal(a, two[30 + k]) for k, a in enumerate(items))
    # Every pen digit once before any twice, each with its own label.
    assert sorted(one.order[:12].tolist()) == list(range(12))
    assert [int(y) for _, y in items] == train.labels[one.order].tolist()
    one.set_epoch(2)
    assert not all(torch_equal(a, one[30 + k]) for k, a in enumerate(items))
    assert len(MixedDigits(stored_x, stored_y)) == 30


def torch_equal(a, b):
    return bool((a[0] == b[0]).all()) and int(a[1]) == int(b[1])
