"""Retraining with the corrections people sent: `python -m training --feedback --init-from latest`.

The corrections are written by the service's own POST /feedback (its Flask app, in process)
into a feedback directory, and reviewed through training/feedback/decisions.py; the model to
start from is the one the test run trained and published, with its checkpoint. Only approved
corrections train: a pending, a rejected and a corrupt record must be left out and counted,
the held-out writers' approved corrections frozen as the evaluation set and scored every
epoch, both models compared on the same digits, and a worse challenger kept out of LATEST.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from service import contract
from service.app import create_app
from service.store import open_store
from service_helpers import data_url, latest_version, png_bytes
from training import evalset
from training.data import load_mnist
from training.feedback import decisions, loader

pytestmark = pytest.mark.slow

QUICK = ["--data", "bundled", "--num-workers", "2", "--max-train-samples", "1000", "--batch-size", "64",
         "--epochs", "1", "--feedback-weight", "2"]


def run_cli(*args, ok=True):
    result = subprocess.run([sys.executable, "-m", "training", *QUICK, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    out = result.stdout + result.stderr
    assert (result.returncode == 0) == ok, out[-5000:]
    return out


@pytest.fixture(scope="module")
def feedback(trained_store, tmp_path_factory):
    """A feedback directory of 60 corrections by 12 writers (through the service's POST
    /feedback): one rejected by an operator (in the layout before decisions), one corrupt,
    one left pending, the others approved; returns (uri, ids)."""
    uri = str(tmp_path_factory.mktemp("feedback") / "store")
    app = create_app({"MODEL_URI": trained_store, "MODEL_POLL_SECONDS": 0, "LOG_LEVEL": "WARNING",
                      "FEEDBACK_URI": uri, "FEEDBACK_RATE_LIMIT": 0})
    assert app.model_holder.wait_ready(60)
    client = app.test_client()
    digits = load_mnist("bundled", log=lambda *a: None)
    ids = []
    for k in range(60):  # training digits past the 1,000 the runs train on, drawn as a canvas would send them
        canvas = Image.fromarray(255 - digits.train_x[5000 + k]).resize((280, 280))
        r = client.post("/feedback", json={"image": data_url(png_bytes(canvas)), "label": int(digits.train_y[5000 + k]),
                                           "client_id": f"writer-{k % 12}"})
        assert r.status_code == 201, r.get_data()
        ids.append(r.get_json()["id"])
    rejected, corrupt, pending = ids[0], ids[1], ids[-1]
    open_store(uri).create(contract.rejected_key(rejected), json.dumps({"id": rejected, "reason": "a test"}).encode())
    decisions.decide(open_store(uri), ids[1:-1], decisions.APPROVED, "looked at them", by="a test")
    with open(os.path.join(uri, contract.record_key(corrupt)), "w") as f:
        f.write("{not json")
    return uri, {"rejected": rejected, "corrupt": corrupt, "pending": pending, "all": ids}


def hold_out_some(store, writers):
    """Give the model ``store`` a holdout secret under which some, not all, of ``writers``
    are held out (the first that does, of a fixed list); returns the held-out ones."""
    for k in range(100):
        secret = f"test-secret-{k}".encode()
        held = [w for w in writers if loader.held_out(w, secret)]
        if 2 <= len(held) <= len(writers) // 2:
            open_store(store).create(contract.HOLDOUT_KEY, secret + b"\n")
            return held
    raise AssertionError("no secret holds out a few of the writers")


def test_retraining_uses_approved_corrections_and_warm_starts_from_latest(store, feedback, tmp_path):
    uri, ids = feedback
    champion = latest_version(store)
    held = hold_out_some(store, [f"writer-{w}" for w in range(12)])
    out = run_cli("--feedback", uri, "--init-from", "latest", "--storage-path", str(tmp_path / "runs"),
                  "--publish", store, "--run-name", "retrain")
    assert f"warm start: from {store}/models/{champion}/checkpoint.pt" in out
    assert (f"feedback: {uri}: 60 records: 58 approved, 1 pending, 1 rejected; trusting the approved ones: 58"
            in out)
    assert "skipped 1 (unreadable or not drawings)" in out and f"feedback: skipped {ids['corrupt']}: " in out
    assert ids["rejected"] not in out and ids["pending"] not in out
    read = re.search(r"feedback: read 58, newest first: training on (\d+) from (\d+) writers; (\d+) approved from "
                     r"(\d+) held-out writers", out)
    used, writers, held_out, held_writers = map(int, read.groups())
    assert used + held_out == 57 and (writers, held_writers) == (12 - len(held), len(held))  # 58 less the corrupt one
    epoch = re.search(r"epoch +1/1 .* real_acc (\d\.\d+)", out)
    assert epoch, out[-3000:]

    # The held-out writers' approved corrections are frozen in the model store, as the real-drawings set.
    frozen = evalset.newest(open_store(store))
    assert f"evalset: froze {frozen.version} in {store}: {held_out} approved corrections of {len(held)} held-out " \
           "writers" in out
    assert len(frozen) == held_out and set(frozen.writers) == set(held)
    assert not set(frozen.ids) & {ids["rejected"], ids["pending"], ids["corrupt"]}

    report = json.loads((tmp_path / "runs" / "retrain" / "report" / "metrics.json").read_text())
    assert sum(map(sum, report["real_confusion_matrix"])) == held_out
    assert report["summary"]["feedback"]["used"] == used and report["summary"]["warm_start"].endswith("checkpoint.pt")
    assert report["summary"]["feedback"]["eval_set"] == frozen.version
    assert (tmp_path / "runs" / "retrain" / "report" / "real_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    versions = open_store(store).list_versions()
    new = [v for v in versions if v != champion]
    assert len(new) == 1, versions
    meta = json.loads(open(os.path.join(store, "models", new[0], "model.json")).read())
    evaluation = meta["evaluation"]
    # Both models scored on the same sets: MNIST validation, the held-out pen writers, the frozen corrections.
    assert evaluation["champion"] == champion and set(evaluation["challenger_scores"]) == {"mnist_val", "pen_val", "real"}
    assert set(evaluation["champion_scores"]) == {"mnist_val", "pen_val", "real"} and evaluation["eval_set"] == frozen.version
    assert evaluation["per_digit"]["real"]["count"] == [int((frozen.y == d).sum()) for d in range(10)]
    assert sum(evaluation["per_digit"]["mnist_val"]["count"]) == 1000
    assert meta["metrics"]["real_accuracy"] == evaluation["challenger_scores"]["real"]
    assert os.path.exists(os.path.join(store, "models", new[0], "checkpoint.pt"))  # the next warm start
    promoted = evaluation["promote"]
    assert (latest_version(store) == new[0]) == promoted
    assert out.count("champion: ") == 1  # one gate, asked once
    assert re.search(rf"champion: {re.escape(store)}: .* -> {'promote' if promoted else 'keep'} {champion}", out)


def test_a_worse_challenger_is_published_but_not_promoted(store, feedback, tmp_path):
    champion = latest_version(store)
    # Fresh weights, one short epoch: far behind the champion.
    out = run_cli("--feedback", feedback[0], "--init-from", "none", "--storage-path", str(tmp_path / "runs"),
                  "--publish", store)
    assert latest_version(store) == champion
    assert re.search(r"champion: .*challenger (is worse on \w+ by more than the margin|loses digit \d of \w+)", out)
    assert "NOT promoted" in out
    new = [v for v in open_store(store).list_versions() if v != champion]
    meta = json.loads(open(os.path.join(store, "models", new[0], "model.json")).read())
    assert meta["evaluation"]["promote"] is False
    assert np.isfinite(meta["evaluation"]["challenger_scores"]["mnist_val"])


def test_a_version_without_its_checkpoint_names_the_flag_to_use(store, tmp_path):
    os.remove(os.path.join(store, "models", latest_version(store), "checkpoint.pt"))
    out = run_cli("--init-from", "latest", "--storage-path", str(tmp_path / "runs"), "--publish", store, ok=False)
    assert "was published without its training checkpoint" in out and "--init-from none" in out
    out = run_cli("--init-from", str(tmp_path / "nowhere"), "--publish", "none", ok=False)
    assert "no checkpoint at" in out
