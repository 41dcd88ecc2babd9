"""Ray Train end to end through the real CLI: checkpoints in a directory and in GCS, resume.

Every test runs `python -m training` in a subprocess with a real embedded Ray (2 workers,
gloo), on a 512-digit subset so an epoch takes about a second; start-up dominates.
GCS is the real fake-gcs-server from the ``fake_gcs`` fixture.
"""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bench.servers import process_tree
from conftest import ROOT
from training.worker import native_bf16

pytestmark = pytest.mark.slow

SMALL = ["--data", "bundled", "--num-workers", "2", "--max-train-samples", "512", "--batch-size", "64"]


def run_cli(*args, env=None, timeout=240):
    """Run the training CLI to completion; return its combined output (asserting exit 0)."""
    result = subprocess.run([sys.executable, "-m", "training", *SMALL, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **(env or {})})
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    return out


def epochs_trained(out):
    """Epoch numbers whose progress line the run printed, in order."""
    return [int(n) for n in re.findall(r"epoch +(\d+)/\d+ +loss", out)]


def resumed_epoch(out):
    m = re.search(r"resumed from checkpoint at epoch (\d+) \((.*?)\)", out)
    return (int(m.group(1)), m.group(2)) if m else (None, None)


def gcs_blobs(bucket, prefix):
    from google.cloud import storage

    from google.auth.credentials import AnonymousCredentials

    client = storage.Client(project="local", credentials=AnonymousCredentials())
    return {b.name: b for b in client.bucket(bucket).list_blobs(prefix=prefix)}


def test_checkpoints_reach_directory_and_gcs_and_model_is_published(fake_gcs, tmp_path):
    bucket = fake_gcs.make_bucket("ckpt-mirror")
    runs, store = tmp_path / "runs", tmp_path / "store"
    out = run_cli("--epochs", "2", "--storage-path", str(runs),
                  "--checkpoint-mirror", f"gs://{bucket}/mirror", "--publish", str(store))
    assert epochs_trained(out) == [1, 2]
    # The default precision, auto: bf16 autocast only where this CPU does bf16 natively.
    expected = "bfloat16 autocast" if native_bf16(torch.device("cpu")) else "float32"
    assert f"precision: {expected} on cpu" in out
    # No --run-name: a fresh, timestamped one.
    name = re.search(r"train: run (\S+) ->", out).group(1)
    assert re.fullmatch(r"digitdraw-\d{8}-\d{6}", name), name

    # The PVC side: Ray Train's run directory holds every epoch's checkpoint (keep 3 >= 2 epochs).
    for epoch in (1, 2):
        state = torch.load(runs / name / f"checkpoint_epoch_{epoch:03d}" / "checkpoint.pt", weights_only=False)
        assert state["epoch"] == epoch
        assert {"model", "optimizer", "scheduler", "metrics", "history"} <= set(state)

    # The GCS side: the same checkpoints, complete (metrics.json is written last).
    blobs = gcs_blobs(bucket, f"mirror/{name}/")
    for epoch in (1, 2):
        d = f"mirror/{name}/checkpoint_epoch_{epoch:03d}"
        assert f"{d}/checkpoint.pt" in blobs and f"{d}/metrics.json" in blobs, sorted(blobs)
        state = torch.load(io.BytesIO(blobs[f"{d}/checkpoint.pt"].download_as_bytes()), weights_only=False)
        assert state["epoch"] == epoch
        assert json.loads(blobs[f"{d}/metrics.json"].download_as_bytes())["epoch"] == epoch

    # The report, and the published model with its metadata.
    report = json.loads((runs / name / "report" / "metrics.json").read_text())
    assert [m["epoch"] for m in report["epochs"]] == [1, 2]
    assert sum(map(sum, report["confusion_matrix"])) == 1000
    for png in ("learning_curves.png", "confusion_matrix.png", "pen_val_confusion_matrix.png"):
        assert (runs / name / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The held-out pen writers: scored every epoch, with their confusion matrix; 45% of
    # the epoch's digits were pen digits (--pen-share's default): 419 beside the 512 MNIST ones.
    pen = report["summary"]["pen"]
    assert all(0 <= m["pen_val_acc"] <= 1 for m in report["epochs"])
    assert sum(map(sum, report["pen_val_confusion_matrix"])) == pen["held_out"] > 1000
    assert pen["per_epoch"] == 419 and pen["digits"] + pen["held_out"] == 7522
    version = json.loads((store / "models" / "LATEST").read_text())["version"]
    meta = json.loads((store / "models" / version / "model.json").read_text())
    assert meta["run_name"] == name
    # The gate scored the pen writers too, and model.json keeps the published file's score.
    assert meta["evaluation"]["challenger_scores"]["pen_val"] == meta["metrics"]["pen_val_accuracy"]
    # Published int8 if it read the validation digits as well as the float model, else float;
    # either way model.json's accuracy is the published file's.
    q = meta["quantization"]
    assert abs(q["float_accuracy"] - report["summary"]["val_accuracy"]) <= 0.002, q  # ORT float vs torch
    if q["scheme"] == "int8":
        assert q["passed"] and "quantize: int8" in out
        assert meta["metrics"]["val_accuracy"] == q["int8_accuracy"] and meta["size_bytes"] == q["int8_size_bytes"]
    else:
        assert not q["passed"] and f"quantize: publishing the float model: {q['reason']}" in out
        assert meta["metrics"]["val_accuracy"] == report["summary"]["val_accuracy"]
        assert meta["size_bytes"] == q["float_size_bytes"]
    # The recipe recorded is the one this run used, flags included (SMALL sets the batch).
    assert meta["config"]["recipe"]["epochs"] == 2 and meta["config"]["recipe"]["batch_size"] == 64

    # The run directory is gone (new PVC): rerunning the name restores from the GCS mirror.
    shutil.rmtree(runs / name)
    out = run_cli("--epochs", "2", "--storage-path", str(runs), "--run-name", name,
                  "--checkpoint-mirror", f"gs://{bucket}/mirror", "--publish", "none")
    assert resumed_epoch(out) == (2, f"gs://{bucket}/mirror/{name}/checkpoint_epoch_002")
    assert epochs_trained(out) == []
    assert (runs / name / "checkpoint_epoch_002" / "checkpoint.pt").exists()


def kill_a_train_worker(root_pid):
    """SIGKILL one Ray Train worker process started under ``root_pid``; return its pid."""
    for pid in process_tree(root_pid)[1:]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"RayTrainWorker" in f.read():
                    os.kill(pid, signal.SIGKILL)
                    return pid
        except (OSError, ProcessLookupError):
            continue
    raise AssertionError("no Ray Train worker process found to kill")


def train_until_killed(args, checkpoint_done, delay):
    """Run the CLI; once ``checkpoint_done()`` is true, wait ``delay`` s and kill a Ray
    Train worker (a real crash: the process dies at once). Returns the run's output."""
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not checkpoint_done():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.02)
        time.sleep(delay)
        kill_a_train_worker(proc.pid)
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-5000:]
    return out


# About a second an epoch: 3,000 digits on 2 workers.
EPOCH_OF_A_SECOND = ["--data", "bundled", "--num-workers", "2", "--max-train-samples", "3000", "--batch-size", "64",
                     "--epochs", "3", "--max-failures", "1", "--publish", "none"]


def test_worker_failure_resumes_from_last_checkpoint_in_gcs_storage(fake_gcs, tmp_path):
    bucket = fake_gcs.make_bucket("ray-runs")

    def first_checkpoint():
        names = gcs_blobs(bucket, "runs/crash/checkpoint_epoch_001/")
        return {f"runs/crash/checkpoint_epoch_001/{f}" for f in ("checkpoint.pt", "metrics.json")} <= set(names)

    # A worker dies in the middle of epoch 2.
    out = train_until_killed([*EPOCH_OF_A_SECOND, "--storage-path", f"gs://{bucket}/runs", "--run-name", "crash",
                              "--precision", "fp32"], first_checkpoint, delay=0.4)
    assert "precision: float32 on cpu" in out
    # The new worker group started from epoch 1's checkpoint.
    epoch, source = resumed_epoch(out)
    assert epoch == 1, out[-4000:]
    assert source.endswith("crash/checkpoint_epoch_001")
    assert epochs_trained(out) == [1, 2, 3]  # epoch 1 was not repeated, epoch 2 printed once (after restart)
    assert "runs/crash/checkpoint_epoch_003/checkpoint.pt" in gcs_blobs(bucket, "runs/crash/")


def test_a_worker_killed_just_after_a_checkpoint_resumes_from_it(tmp_path):
    runs = tmp_path / "runs"
    first = runs / "quick" / "checkpoint_epoch_001"

    def first_checkpoint():
        return (first / "metrics.json").exists() and (first / "checkpoint.pt").exists()

    # Before Ray's controller has registered the checkpoint, it hands the restarted
    # workers none; the run directory already holds it.
    out = train_until_killed([*EPOCH_OF_A_SECOND, "--storage-path", str(runs), "--run-name", "quick"],
                             first_checkpoint, delay=0)
    epoch, source = resumed_epoch(out)
    assert epoch == 1, out[-4000:]
    assert source.endswith("quick/checkpoint_epoch_001")
    assert epochs_trained(out) == [1, 2, 3]


def test_rerun_after_driver_death_resumes_same_run(tmp_path):
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "training", *SMALL, "--epochs", "5", "--storage-path", str(runs),
           "--run-name", "killed", "--publish", "none"]
    # Own session, so killing the group kills the driver and the Ray it embedded.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (runs / "killed" / "checkpoint_epoch_002" / "checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before its second checkpoint"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        first = proc.communicate()[0]
    done = epochs_trained(first)
    assert done and done[-1] < 5, first[-3000:]
    # What the killed run had left on disk (its printed lines can lag behind its checkpoints,
    # and its Ray workers may finish writing one more before they notice the driver is gone).
    on_disk = [int(d.name[-3:]) for d in (runs / "killed").glob("checkpoint_epoch_*")
               if (d / "metrics.json").exists() and (d / "checkpoint.pt").exists()]

    out = run_cli("--epochs", "5", "--storage-path", str(runs), "--run-name", "killed", "--publish", "none")
    epoch, _ = resumed_epoch(out)
    assert epoch is not None and epoch >= max(on_disk) >= done[-1], (on_disk, out[-4000:])
    assert epochs_trained(out) == list(range(epoch + 1, 6))  # nothing before the checkpoint is repeated
    report = json.loads((runs / "killed" / "report" / "metrics.json").read_text())
    assert [m["epoch"] for m in report["epochs"]] == [1, 2, 3, 4, 5]


def test_help_documents_every_flag_with_its_env_var():
    out = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60).stdout
    out = " ".join(out.split())  # argparse wraps lines anywhere
    flags = {"--data": "TRAIN_DATA", "--data-dir": "DATA_DIR", "--mirrors": "MNIST_MIRRORS", "--epochs": "EPOCHS",
             "--batch-size": "BATCH_SIZE", "--lr": "LR", "--num-workers": "NUM_WORKERS", "--use-gpu": "USE_GPU",
             "--storage-path": "STORAGE_PATH", "--checkpoint-mirror": "CHECKPOINT_MIRROR", "--run-name": "RUN_NAME",
             "--publish": "PUBLISH_URIS", "--max-train-samples": "MAX_TRAIN_SAMPLES",
             "--promotion-margin": "PROMOTION_MARGIN", "--force-promote": "FORCE_PROMOTE",
             "--max-failures": "MAX_FAILURES", "--keep-checkpoints": "KEEP_CHECKPOINTS", "--seed": "SEED",
             "--precision": "PRECISION", "--quantize": "QUANTIZE", "--feedback": "FEEDBACK_URI",
             "--feedback-trust": "FEEDBACK_TRUST", "--feedback-max": "FEEDBACK_MAX", "--feedback-share": "FEEDBACK_SHARE",
             "--feedback-weight": "FEEDBACK_WEIGHT", "--digit-margin": "DIGIT_MARGIN", "--init-from": "INIT_FROM",
             "--pen-share": "PEN_SHARE"}
    for flag, env in flags.items():
        assert re.search(rf"{flag}\b", out), flag
        assert f"(env {env};" in out, env


def test_unknown_precision_is_refused_before_anything_starts():
    result = subprocess.run([sys.executable, "-m", "training", "--precision", "fp16"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "--precision 'fp16': use auto, bf16 or fp32" in result.stderr


def test_unknown_feedback_trust_is_refused_before_anything_starts():
    result = subprocess.run([sys.executable, "-m", "training", "--feedback-trust", "everyone"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "argument --feedback-trust: 'everyone': use approved or all" in result.stderr


def test_unknown_quantization_is_refused_before_anything_starts():
    result = subprocess.run([sys.executable, "-m", "training", "--quantize", "int4"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "--quantize 'int4': use int8 or none" in result.stderr


def test_a_pen_share_outside_0_to_1_is_refused_before_anything_starts():
    result = subprocess.run([sys.executable, "-m", "training", "--pen-share", "1"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "--pen-share 1.0: use a share from 0 (no pen digits) up to, not including, 1" in result.stderr
