"""Retraining with the corrections people sent: `python -m training --feedback --init-from latest`.

The corrections are written by the service's own POST /feedback (its Flask app, in process)
into a feedback directory; the model to start from is the one the test run trained and
published, with its checkpoint. A rejected and a corrupt record must be skipped and counted,
the held-out writers scored every epoch, both models compared on the same digits, and a
worse challenger kept out of LATEST.
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
from training.data import load_mnist

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
    /feedback), one of them rejected by an operator and one corrupt; returns (uri, ids)."""
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
    rejected, corrupt = ids[0], ids[1]
    open_store(uri).create(contract.rejected_key(rejected), json.dumps({"id": rejected, "reason": "a test"}).encode())
    with open(os.path.join(uri, contract.record_key(corrupt)), "w") as f:
        f.write("{not json")
    return uri, {"rejected": rejected, "corrupt": corrupt, "all": ids}


def test_retraining_uses_the_corrections_and_warm_starts_from_latest(store, feedback, tmp_path):
    uri, ids = feedback
    champion = latest_version(store)
    out = run_cli("--feedback", uri, "--init-from", "latest", "--storage-path", str(tmp_path / "runs"),
                  "--publish", store, "--run-name", "retrain")
    assert f"warm start: from {store}/models/{champion}/checkpoint.pt" in out
    assert "feedback: 58 corrections from 12 writers" in out and "skipped 2 (1 rejected, 1 unreadable)" in out
    assert f"feedback: skipped {ids['corrupt']}: " in out and ids["rejected"] not in out.split("skipped 2")[1]
    held = re.search(r"feedback: training on (\d+) corrections .*, validating on (\d+) from (\d+) other writers", out)
    used, held_out, writers = map(int, held.groups())
    assert used + held_out == 58 and held_out > 0 and 0 < writers < 12
    epoch = re.search(r"epoch +1/1 .* real_acc (\d\.\d+)", out)
    assert epoch, out[-3000:]

    report = json.loads((tmp_path / "runs" / "retrain" / "report" / "metrics.json").read_text())
    assert sum(map(sum, report["real_confusion_matrix"])) == held_out
    assert report["summary"]["feedback"]["used"] == used and report["summary"]["warm_start"].endswith("checkpoint.pt")
    assert (tmp_path / "runs" / "retrain" / "report" / "real_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    versions = open_store(store).list_versions()
    new = [v for v in versions if v != champion]
    assert len(new) == 1, versions
    meta = json.loads(open(os.path.join(store, "models", new[0], "model.json")).read())
    evaluation = meta["evaluation"]
    # Both models scored on the same sets: MNIST validation, the held-out pen writers, the held-out corrections.
    assert evaluation["champion"] == champion
    assert set(evaluation["challenger_scores"]) == set(evaluation["champion_scores"]) == {"mnist_val", "pen_val", "real"}
    assert meta["metrics"]["real_accuracy"] == evaluation["challenger_scores"]["real"]
    assert os.path.exists(os.path.join(store, "models", new[0], "checkpoint.pt"))  # the next warm start
    promoted = evaluation["promote"]
    assert (latest_version(store) == new[0]) == promoted
    assert re.search(rf"champion: {re.escape(store)}: .* -> {'promote' if promoted else 'keep'} {champion}", out)


def test_a_worse_challenger_is_published_but_not_promoted(store, feedback, tmp_path):
    champion = latest_version(store)
    # Fresh weights, one short epoch: far behind the champion.
    out = run_cli("--feedback", feedback[0], "--init-from", "none", "--storage-path", str(tmp_path / "runs"),
                  "--publish", store)
    assert latest_version(store) == champion
    assert re.search(r"champion: .*challenger is worse on (MNIST validation|real drawings)", out)
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
