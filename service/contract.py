"""The model-store contract: what training writes and the service reads.

It lives with the service because a model is whatever the service will load, and it
imports nothing but numpy, so training imports it too (the training image copies this
file and service/store.py, the store client, and nothing else of service/).

A store is a directory, a PVC mount or ``gs://bucket/prefix`` (service/store.py)::

    models/<version>/model.onnx      the model: one file, input INPUT_NAME, output OUTPUT_NAME
    models/<version>/model.json      version, created_at, sha256 and size of model.onnx, metrics, source
    models/<version>/checkpoint.pt   the training checkpoint it was exported from (warm starts)
    models/LATEST                    the pointer: {"version", "seq", "previous", "action", "by", "reason", "at"}
    history/<seq>.json               every pointer LATEST has held, one immutable object each

``<version>`` is ``<UTC %Y%m%dT%H%M%SZ>-<first 8 hex of the sha256>``. A version directory
is immutable once written. LATEST is written last and moved by compare-and-swap, and the
pointer it holds is also the newest history entry (training/registry.py).

A model store also holds the real-drawings evaluation set the promotion gate grades with
(training/evalset.py)::

    evalsets/<version>.json          approved corrections of held-out writers, frozen: ids, labels, pixels
    evalsets/holdout.key             the secret that picks the held-out writers (created once)

``<version>`` is again ``<UTC %Y%m%dT%H%M%SZ>-<first 8 hex of the sha256 of its records>``;
the newest version is the one in use, and a version never changes.

A feedback store (FEEDBACK_URI) holds the corrections people send, and the reviewers'
decisions on them::

    records/<id>.json                one record; <id> is the sha256 of its 28x28 input
    days/<YYYY-MM-DD>/<id>           an empty marker per record and the day it was sent
    decisions/<id>/<stamp>-<decision>.json
                                     a reviewer's decision: {id, decision, by, at, reason}, decision
                                     "approved" or "rejected", <stamp> its UTC time as %Y%m%dT%H%M%S.%fZ
    rejected/<id>.json               a rejection in the layout before decisions: {id, by, at, reason}

Everything in it is create-only: nothing is ever overwritten or deleted. A record is
*pending* until a decision names it; its state is the decision of its newest key (the keys
sort by time), so a later decision reverses an earlier one, and a listing of decisions/ and
rejected/ gives every record's state without reading one object. A ``rejected/<id>.json``
counts as a rejection older than any decision. ``decision_key`` and ``parse_decision_key``
are the one definition of the decision keys.
A record holds a drawing (``not_a_drawing``): the service stores nothing else, and the
training loader applies the same rule to what it reads.
"""
import datetime

import numpy as np

# The local stores `make run`, the service, training and both CLIs use when none is named.
DEFAULT_MODEL_URI, DEFAULT_FEEDBACK_URI = "model-store", "feedback-store"

MODELS = "models"
LATEST = f"{MODELS}/LATEST"
HISTORY = "history"
MODEL_FILE, META_FILE, CHECKPOINT_FILE = "model.onnx", "model.json", "checkpoint.pt"

RECORDS, DAYS, DECISIONS, REJECTED = "records", "days", "decisions", "rejected"
APPROVED_DECISION, REJECTED_DECISION = "approved", "rejected"  # what a decision key ends in
DECISION_STAMP = "%Y%m%dT%H%M%S.%fZ"

EVALSETS = "evalsets"
HOLDOUT_KEY = f"{EVALSETS}/holdout.key"

# The ONNX graph: one float32 input [N, 1, 28, 28] and one float32 output [N, 10], N dynamic.
SIDE = 28
CLASSES = 10
INPUT_NAME, INPUT_SHAPE = "image", ["N", 1, SIDE, SIDE]
OUTPUT_NAME, OUTPUT_SHAPE = "logits", ["N", CLASSES]
PIXEL_MAX = 255  # stored digits are uint8, ink 255; the model sees pixel / PIXEL_MAX


def model_key(version, name):
    """The key of file ``name`` (MODEL_FILE, META_FILE, CHECKPOINT_FILE) of ``version``."""
    return f"{MODELS}/{version}/{name}"


def history_key(seq):
    """The key of the history entry with sequence number ``seq``; keys sort in order."""
    return f"{HISTORY}/{seq:010d}.json"


def record_key(record_id):
    return f"{RECORDS}/{record_id}.json"


def day_key(day, record_id):
    return f"{DAYS}/{day}/{record_id}"


def rejected_key(record_id):
    return f"{REJECTED}/{record_id}.json"


def decision_key(record_id, at, decision):
    """The key of a decision (APPROVED_DECISION or REJECTED_DECISION) on ``record_id`` taken
    at ``at``, an aware UTC datetime: keys of one record sort by time."""
    if decision not in (APPROVED_DECISION, REJECTED_DECISION):
        raise ValueError(f"decision {decision!r} is neither {APPROVED_DECISION!r} nor {REJECTED_DECISION!r}")
    return f"{DECISIONS}/{record_id}/{at.astimezone(datetime.timezone.utc):{DECISION_STAMP}}-{decision}.json"


def parse_decision_key(key):
    """(record id, stamp, decision) of a key ``decision_key`` made (with or without the
    store's DECISIONS prefix); None for any other key."""
    parts = key.split("/")
    if parts[0] == DECISIONS:
        parts = parts[1:]
    if len(parts) != 2 or not parts[1].endswith(".json"):
        return None
    stamp, _, decision = parts[1].removesuffix(".json").partition("-")
    if decision not in (APPROVED_DECISION, REJECTED_DECISION):
        return None
    try:
        datetime.datetime.strptime(stamp, DECISION_STAMP)
    except ValueError:
        return None
    return parts[0], stamp, decision


def evalset_key(version):
    """The key of the frozen evaluation set ``version``."""
    return f"{EVALSETS}/{version}.json"


def scale(pixels):
    """uint8 pixels (ink 255) -> float32 of the same shape, ink 1.0 and background 0.0."""
    return np.asarray(pixels, dtype=np.float32) / PIXEL_MAX


def model_input(digits):
    """Digits as stored, uint8 [N, 28, 28] -> the model's input, float32 [N, 1, 28, 28]."""
    return scale(digits)[:, None]


def to_pixels(x):
    """A model input (float32, ink 1.0) -> uint8 pixels, the inverse of ``scale``."""
    return np.round(np.asarray(x) * PIXEL_MAX).astype(np.uint8)


# What a drawing of a digit is, measured on the 28x28 input (``not_a_drawing``). Every bound
# keeps a margin on 9,482 real drawings rendered by the page, none of which it refuses
# (docs/serving.md: UNIPEN pen digits, traced MNIST digits, bench/styles), and refuses dots,
# filled shapes and random noise of every size and density tried.
MIN_INK_SIDE = 16        # pixels of the uploaded image: the ink's longer side (a 1x1 dot has 1)
MIN_EMPTY_SHARE = 0.27   # of the square around the ink that stays empty (real drawings: >= 0.32)
MIN_SOLID_SHARE = 0.62   # of the ink in pixels at least half dark (real: >= 0.66; noise 0.55-0.6)
MIN_SOLID_PIXELS = 14    # pixels at least half dark (real: >= 18; a few specks have 4-12)
MAX_PIECES = 4           # separate pieces of solid ink (real: at most 3)
MAX_HOLES = 9            # holes in the solid ink (real: at most 7; a mesh of noise has 14 and more)
MIN_STROKES_SIDE = 0.1   # of the pad: the longer side of the strokes' extent (real: >= 0.35)
_SOLID, _EMPTY = PIXEL_MAX // 2 + 1, PIXEL_MAX // 10 + 1


def not_a_drawing(pixels, strokes=None, ink_side=None):
    """Why ``pixels`` (uint8 [28, 28], ink 255: a record's 28x28 input) is not a drawing of a
    digit, as a phrase for an error message, or None when it is one. ``strokes`` (the page's,
    lists of [x, y] in pad fractions) and ``ink_side`` (the ink's longer side in the uploaded
    image, in pixels) are checked too when given. A drawing is strokes: empty space around
    them (not a dot or a blob), solid (not haze or noise), in a few pieces with a few holes
    (not specks or a mesh). About half a millisecond; numpy only."""
    p = np.asarray(pixels)
    if ink_side is not None and ink_side < MIN_INK_SIDE:
        return f"the ink is {ink_side} px across, a dot rather than a digit"
    if strokes is not None and len(strokes):
        points = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in strokes])
        if (points.max(axis=0) - points.min(axis=0)).max() < MIN_STROKES_SIDE:
            return "the strokes make a dot rather than a digit"
    ys, xs = np.nonzero(p)
    if not len(ys):
        return "there is no ink"
    side = int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1
    top, left = (ys.max() + ys.min() + 1 - side) // 2, (xs.max() + xs.min() + 1 - side) // 2
    square = np.zeros((side, side), p.dtype)
    inside = p[max(top, 0):top + side, max(left, 0):left + side]
    square[max(-top, 0):max(-top, 0) + inside.shape[0], max(-left, 0):max(-left, 0) + inside.shape[1]] = inside
    if (square < _EMPTY).mean() < MIN_EMPTY_SHARE:
        return "the ink is a blob (a dot or a filled shape), not strokes"
    ink, solid = p.astype(np.float64), p >= _SOLID
    if ink[solid].sum() < MIN_SOLID_SHARE * ink.sum():
        return "the ink is haze or noise, not strokes"
    if solid.sum() < MIN_SOLID_PIXELS:
        return "the ink is a few specks, not strokes"
    pieces = _pieces(solid)
    if pieces > MAX_PIECES:
        return f"the ink is {pieces} scattered specks, not strokes"
    if pieces - _euler(solid) > MAX_HOLES:
        return "the ink is a mesh of noise, not strokes"
    return None


def _pieces(mask):
    """The 8-connected pieces of ``mask``."""
    todo, pieces = set(zip(*np.nonzero(mask))), 0
    while todo:
        pieces += 1
        stack = [todo.pop()]
        while stack:
            y, x = stack.pop()
            for q in ((y - 1, x - 1), (y - 1, x), (y - 1, x + 1), (y, x - 1), (y, x + 1),
                      (y + 1, x - 1), (y + 1, x), (y + 1, x + 1)):
                if q in todo:
                    todo.remove(q)
                    stack.append(q)
    return pieces


def _euler(mask):
    """The Euler number of ``mask`` (8-connected pieces minus their holes), from its 2x2
    neighbourhoods (Gray's formula)."""
    m = np.pad(mask, 1).astype(np.int8)
    a, b, c, d = m[:-1, :-1], m[:-1, 1:], m[1:, :-1], m[1:, 1:]
    n = a + b + c + d
    diagonal = (n == 2) & (a == d)
    return int(((n == 1).sum() - (n == 3).sum() - 2 * diagonal.sum()) // 4)
