"""Champion against challenger: the new model replaces LATEST's only if it wins on the same digits.

Both ONNX files, exactly as the service would run them, are scored in the same run on the
same sets: MNIST validation and, when there are corrections, the real-drawings holdout
(training/feedback.py). The challenger is promoted only if it is not worse on MNIST
validation by more than the margin, and at least as good on real drawings.
"""
import numpy as np

from service import contract
from service.store import StoreError, StoreUnreachable, load_verified
from training.evaluate import predict


def scores(model, sets):
    """{set name: accuracy} of an ONNX model (bytes) on each (images, labels) of ``sets``."""
    return {name: float(np.mean(predict(model, x) == y)) for name, (x, y) in sets.items() if len(y)}


def decide(challenger, champion, margin):
    """(promote, reason) from two score dicts; ``champion`` None when LATEST is unusable."""
    if champion is None:
        return True, "no usable champion"
    mnist_ok = challenger["mnist_val"] >= champion["mnist_val"] - margin - 1e-9
    real_ok = "real" not in challenger or "real" not in champion or challenger["real"] >= champion["real"]
    said = ", ".join(f"{k} {challenger[k]:.4f} vs {champion.get(k, float('nan')):.4f}" for k in challenger)
    if mnist_ok and real_ok:
        return True, f"challenger wins or ties ({said}; MNIST margin {margin})"
    why = "worse on MNIST validation by more than the margin" if not mnist_ok else "worse on real drawings"
    return False, f"challenger is {why} ({said}; MNIST margin {margin})"


class Gate:
    """A promotion gate for training/publish.py: scores LATEST's model (once per version)
    on ``sets`` and compares it with the challenger's ``own`` scores."""

    def __init__(self, own, sets, margin, log=print):
        self.own, self.sets, self.margin, self.log = own, sets, margin, log
        self.champions = {}  # version -> scores, or None when it cannot be used
        self.last = None     # the evaluation record of the latest decision, for model.json

    def champion(self, store, version):
        if version not in self.champions:
            try:
                model, _ = load_verified(store, version)
                self.champions[version] = scores(model, self.sets)
            except StoreUnreachable:
                raise
            except StoreError as e:
                self.log(f"champion: {store.uri}/{contract.model_key(version, contract.MODEL_FILE)} is unusable ({e})")
                self.champions[version] = None
        return self.champions[version]

    def __call__(self, store, current):
        if current is None:
            promote, reason, champion = True, "no LATEST yet", None
        else:
            champion = self.champion(store, current)
            promote, reason = decide(self.own, champion, self.margin)
        self.last = {"champion": current, "champion_scores": champion, "challenger_scores": self.own,
                     "margin": self.margin, "promote": promote, "reason": reason}
        self.log(f"champion: {store.uri}: {reason} -> {'promote' if promote else 'keep'} {current}")
        return promote, reason
