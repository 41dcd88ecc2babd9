"""The promotion gate: the one place that decides whether a new model may replace LATEST's.

training/publish.py asks it, once per LATEST it finds, just before it would move LATEST;
nothing else decides. Both ONNX files, exactly as the service would run them, are scored
in the same run on the same trusted sets, each (images, labels):

- ``mnist_val``, MNIST validation;
- ``pen_val``, the bundled real-pen validation set, when training has it;
- ``real``, the frozen real-drawings evaluation set (training/evalset.py): approved
  corrections of held-out writers, which no anonymous client can write to or choose.

The challenger is refused if, on any set,

- its accuracy is lower than the champion's by more than ``margin`` (PROMOTION_MARGIN,
  0.2 points: two of MNIST validation's 1,000 digits), or
- on any one digit, it reads fewer right than the champion by more than ``digit_margin``
  of that digit's samples AND by more than one sample.

Why per digit: poison aimed at one style (1s with a flag, labelled 7) moves one digit of
one set and hides in every average. Why DIGIT_MARGIN = 5 points and more than one sample:
a digit of a small set moves in big steps (one of 15 samples is 6.7 points), and an honest
retraining flips a sample or two of a digit either way, so one sample must never refuse a
model; two of 15 (13 points) is a real loss. On MNIST validation's ~100 samples a digit, 5
points is 5 samples, beyond the 1-3 an honest two-epoch retraining moves any digit
(docs/benchmarks.md); a successful targeted flip moves its digit by tens of points.
"""
import dataclasses
import hashlib

import numpy as np

from service import contract
from service.store import StoreError, StoreUnreachable, load_verified
from training.evaluate import predict

PROMOTION_MARGIN = 0.002  # of a set's accuracy
DIGIT_MARGIN = 0.05       # of one digit's samples in one set (and more than one sample)


def scores(model, sets):
    """{set name: {"accuracy", "count", "correct": [per digit], "counts": [per digit]}} of
    an ONNX model (bytes) on each (images uint8 [N, 28, 28], labels [N]) of ``sets`` that
    is not empty."""
    out = {}
    for name, (x, y) in sets.items():
        if not len(y):
            continue
        y = np.asarray(y)
        right = predict(model, x) == y
        out[name] = {"accuracy": float(right.mean()), "count": int(len(y)),
                     "correct": [int(right[y == d].sum()) for d in range(contract.CLASSES)],
                     "counts": [int((y == d).sum()) for d in range(contract.CLASSES)]}
    return out


def compare(challenger, champion, margin=PROMOTION_MARGIN, digit_margin=DIGIT_MARGIN):
    """(promote, reason, what stopped it or None) from two ``scores`` of the same sets."""
    said = ", ".join(f"{name} {s['accuracy']:.4f} vs {champion[name]['accuracy']:.4f}"
                     for name, s in challenger.items() if name in champion)
    rules = f"set margin {margin}, digit margin {digit_margin} and more than one sample"
    for name, s in challenger.items():
        if name not in champion:
            continue
        c = champion[name]
        if s["accuracy"] < c["accuracy"] - margin - 1e-9:
            stopped = {"set": name, "digit": None, "challenger": s["accuracy"], "champion": c["accuracy"]}
            return False, f"challenger is worse on {name} by more than the margin ({said}; {rules})", stopped
    losses = []
    for name, s in challenger.items():
        if name not in champion:
            continue
        for d in range(contract.CLASSES):
            n, lost = s["counts"][d], champion[name]["correct"][d] - s["correct"][d]
            if n and lost > 1 and lost / n > digit_margin + 1e-9:
                losses.append((lost / n, name, d, n, s["correct"][d], champion[name]["correct"][d]))
    if losses:
        share, name, d, n, mine, theirs = max(losses)
        stopped = {"set": name, "digit": d, "count": n, "challenger": mine, "champion": theirs}
        return False, (f"challenger loses digit {d} of {name}: {mine}/{n} right against the champion's {theirs}/{n} "
                       f"({100 * share:.1f} points; {said}; {rules})"), stopped
    return True, f"challenger wins or ties on every set and digit ({said}; {rules})", None


@dataclasses.dataclass
class Verdict:
    """The gate's answer: ``promote``, the ``reason`` in words, and ``record``, the
    evaluation model.json keeps."""

    promote: bool
    reason: str
    record: dict


class Gate:
    """The promotion gate for training/publish.py: ``gate(store, current, model)`` scores
    ``model`` (the challenger's ONNX bytes) and the model LATEST names in ``store``
    (``current``; None when there is none) on ``sets`` ({name: (images, labels)}), each
    model once, and returns a Verdict. ``eval_set`` names the frozen evaluation set
    version, for the record."""

    def __init__(self, sets, margin=PROMOTION_MARGIN, digit_margin=DIGIT_MARGIN, eval_set=None, log=print):
        self.sets, self.margin, self.digit_margin, self.eval_set, self.log = sets, margin, digit_margin, eval_set, log
        self.cache = {}  # sha256 of a model or (store uri, version) -> scores, or None when it cannot be used

    def scores(self, model):
        """``scores`` of ONNX bytes on the gate's sets, computed once per model."""
        key = hashlib.sha256(model).hexdigest()
        if key not in self.cache:
            self.cache[key] = scores(model, self.sets)
        return self.cache[key]

    def champion(self, store, version):
        key = (store.uri, version)
        if key not in self.cache:
            try:
                model, _ = load_verified(store, version)
                self.cache[key] = self.scores(model)
            except StoreUnreachable:
                raise
            except StoreError as e:
                self.log(f"champion: {store.uri}/{contract.model_key(version, contract.MODEL_FILE)} is unusable ({e})")
                self.cache[key] = None
        return self.cache[key]

    def __call__(self, store, current, model):
        own = self.scores(model)
        champion, stopped = None, None
        if current is None:
            promote, reason = True, "no LATEST yet"
        else:
            champion = self.champion(store, current)
            if champion is None:
                promote, reason = True, f"LATEST's model {current} is unusable"
            else:
                promote, reason, stopped = compare(own, champion, self.margin, self.digit_margin)
        record = {"champion": current, "challenger_scores": {k: v["accuracy"] for k, v in own.items()},
                  "champion_scores": {k: v["accuracy"] for k, v in champion.items()} if champion else None,
                  "per_digit": {k: {"count": v["counts"], "challenger": v["correct"],
                                    "champion": champion[k]["correct"] if champion and k in champion else None}
                                for k, v in own.items()},
                  "margin": self.margin, "digit_margin": self.digit_margin, "eval_set": self.eval_set,
                  "promote": promote, "reason": reason, "stopped_by": stopped}
        self.log(f"champion: {store.uri}: {reason} -> {'promote' if promote else 'keep'} {current}")
        return Verdict(promote, reason, record)
