"""A night's retraining against a backlog of corrections: what reading it costs, as the backlog grows.

Builds feedback stores of --backlogs records each (the largest at least 100,000), as
POST /feedback stores them (service/contract.py: records/, days/ markers) over --days
days, and reviews them as a busy deployment would: of the records, APPROVED_SHARE
approved, REJECTED_SHARE rejected (decisions/ objects, through
training/feedback/decisions.py) and the rest pending; FLOOD_SHARE of them come from one
client, the others from --writers writers. Then, in a fresh process per store, runs
exactly what the nightly job runs before it trains: the loader (the default trust,
--feedback-max and --feedback-share) and the frozen evaluation set's update, and
measures its wall time and peak RSS (the process's ru_maxrss). The training that follows
sees at most --feedback-max corrections, whatever the backlog: its input is printed as
arrays' bytes.

    python -m bench.backlog_bench                       # directories: 1,000, 10,000 and 100,000 records
    python -m bench.backlog_bench --gcs                 # the same stores read from fake-gcs-server (gs://)

The stores are built once, as directories under --work (kept between runs); with --gcs,
fake-gcs-server loads them at its start (its -data option, from hard links), which is
much faster than uploading a quarter of a million objects one by one, and the reading is
measured over gs://. Writes
bench/results/backlog-<UTC>.json with the machine, and compares the figures with the
nightly job's head pod (ray/base/rayjob.yaml: the driver runs there): its memory limit and
activeDeadlineSeconds.
"""
import argparse
import base64
import concurrent.futures
import datetime
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from bench import ROOT, machine
from bench.servers import fake_gcs
from service import contract
from service.store import open_store
from training.data import SAMPLE_DIR, TRAIN_IMAGES, TRAIN_LABELS, read_pair
from training.feedback import decisions
from training.feedback.loader import MAX_CORRECTIONS

APPROVED_SHARE, REJECTED_SHARE, FLOOD_SHARE = 0.6, 0.1, 0.3
HEAD_MEMORY_MIB, DEADLINE_S = 4096, 7200  # ray/base/rayjob.yaml: the head's limit, activeDeadlineSeconds
WRITERS = 2000
WEIGHT = 8  # --feedback-weight's default
BUCKET = "backlog-bench"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlogs", default="1000,10000,100000", help="records in each store (default 1000,10000,100000)")
    ap.add_argument("--days", type=int, default=30, help="days the records are spread over (default 30)")
    ap.add_argument("--work", default="/tmp/backlog-bench", help="where the stores are built and kept")
    ap.add_argument("--gcs", action="store_true", help="build and read the stores on fake-gcs-server instead")
    ap.add_argument("--measure", nargs=2, metavar=("FEEDBACK", "MODELS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="result file (default bench/results/backlog-<UTC>.json)")
    return ap.parse_args()


def record_bytes(pixels, label, client, at):
    """A record's id and bytes, exactly as service/feedback.py writes them."""
    record_id = hashlib.sha256(pixels.tobytes()).hexdigest()
    record = {"id": record_id, "pixels": base64.b64encode(pixels.tobytes()).decode(), "label": label,
              "predicted": (label + 1) % 10, "model_version": None, "client_id": client,
              "created_at": f"{at:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z", "image_sha256": record_id}
    return record_id, (json.dumps(record, sort_keys=True) + "\n").encode()


def build(uri, n, days):
    """A feedback store of ``n`` records over ``days`` days, reviewed; skipped if already built."""
    store = open_store(uri)
    if "://" not in uri:
        os.makedirs(uri, exist_ok=True)
    done = "backlog-bench-built"  # a marker of a finished build, outside the layout's folders
    if store.exists(done):
        return
    x, y = read_pair(SAMPLE_DIR, TRAIN_IMAGES, TRAIN_LABELS)
    rng = np.random.default_rng(n)
    now = datetime.datetime.now(datetime.timezone.utc)
    flood = rng.random(n) < FLOOD_SHARE
    writer = rng.integers(WRITERS, size=n)
    second = rng.integers(86400, size=n)

    def one(k):
        pixels = x[k % len(x)].copy()
        pixels[k // len(x) % 28, :4] = k // len(x) // 28 + 1  # a distinct drawing, nearly the same digit
        client = "flood" if flood[k] else f"writer-{writer[k]}"
        at = now - datetime.timedelta(days=int(k % days), seconds=int(second[k]))
        record_id, data = record_bytes(pixels, int(y[k % len(x)]), client, at)
        store.create(contract.record_key(record_id), data)
        store.create(contract.day_key(f"{at:%Y-%m-%d}", record_id), b"")
        return record_id

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(one, range(n)))
        print(f"  {uri}: {n:,} records in {time.monotonic() - started:.0f} s", flush=True)
    draw = rng.random(n)
    current = {i: decisions.PENDING for i in ids}
    approved = [i for i, r in zip(ids, draw) if r < APPROVED_SHARE]
    rejected = [i for i, r in zip(ids, draw) if APPROVED_SHARE <= r < APPROVED_SHARE + REJECTED_SHARE]
    decisions.decide(store, approved, decisions.APPROVED, "backlog_bench", by="bench", current=current)
    decisions.decide(store, rejected, decisions.REJECTED, "backlog_bench", by="bench", current=current)
    store.create(done, b"")
    print(f"  {uri}: reviewed ({len(approved):,} approved, {len(rejected):,} rejected) in "
          f"{time.monotonic() - started:.0f} s", flush=True)


def measure(feedback, models):
    """In this process: what the nightly job does with the store before training; prints JSON."""
    from training import evalset
    from training.feedback import loader

    started = time.monotonic()
    model_store = open_store(models)
    if "://" not in models:
        os.makedirs(models, exist_ok=True)
    lines = []
    found = loader.load(open_store(feedback), evalset.secret(model_store), log=lines.append)
    loaded_s = time.monotonic() - started
    real = evalset.update(model_store, found.held, found.states, feedback, lines.append)
    wall_s = time.monotonic() - started
    train_bytes = found.train.x.nbytes * WEIGHT  # what joins MNIST in train_x, --feedback-weight times
    print(json.dumps({"wall_s": round(wall_s, 1), "load_s": round(loaded_s, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "counts": found.counts, "used": len(found.train), "eval_set": len(real) if real else 0,
                      "train_input_mib": round(train_bytes / 2 ** 20, 1), "log": lines}))


def run_measure(feedback, models):
    result = subprocess.run([sys.executable, "-m", "bench.backlog_bench", "--measure", feedback, models], cwd=ROOT,
                            capture_output=True, text=True, env=os.environ)
    if result.returncode != 0:
        sys.exit(f"error: measuring {feedback} failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    args = parse_args()
    if args.measure:
        return measure(*args.measure)
    backlogs = [int(n) for n in args.backlogs.split(",")]
    host = machine.describe()
    for n in backlogs:
        print(f"backlog of {n:,} records: building {args.work}/{n}", flush=True)
        build(os.path.join(args.work, str(n), "feedback"), n, args.days)
    gcs = None
    if args.gcs:
        data = os.path.join(args.work, "gcs-data")
        shutil.rmtree(data, ignore_errors=True)
        for n in backlogs:
            os.makedirs(os.path.join(data, BUCKET, str(n)))
            subprocess.run(["cp", "-al", os.path.join(args.work, str(n), "feedback"),
                            os.path.join(data, BUCKET, str(n), "feedback")], check=True)
        started = time.monotonic()
        gcs = fake_gcs(data, timeout=1800)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.url
        print(f"fake-gcs-server loaded the stores in {time.monotonic() - started:.0f} s", flush=True)
    results = []
    try:
        for n in backlogs:
            base = f"gs://{BUCKET}/{n}" if gcs else os.path.join(args.work, str(n))
            models = f"{base}/models-{int(time.time())}"  # a fresh model store: the set is frozen anew
            result = {"backlog": n, "store": base, **run_measure(f"{base}/feedback", models)}
            results.append(result)
            print(f"{base}: read in {result['wall_s']} s, peak RSS {result['peak_rss_mib']} MiB; trains on "
                  f"{result['used']:,} ({result['train_input_mib']} MiB of input at weight {WEIGHT}), grades on "
                  f"{result['eval_set']:,}; {result['counts']['left']:,} left for later runs", flush=True)
    finally:
        if gcs:
            gcs.stop()
    host["load_average_at_end"] = os.getloadavg()
    largest = results[-1]
    verdict = {"memory_within_head_limit": largest["peak_rss_mib"] < HEAD_MEMORY_MIB,
               "time_within_deadline": largest["wall_s"] < DEADLINE_S,
               "bounded": all(r["used"] <= MAX_CORRECTIONS for r in results)}
    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("backlog-%Y%m%dT%H%M%SZ.json",
                                                                           time.gmtime()))
    with open(out, "w") as f:
        json.dump({"machine": host, "backend": "fake-gcs-server" if gcs else "directory",
                   "limits": {"head_memory_mib": HEAD_MEMORY_MIB, "deadline_s": DEADLINE_S,
                              "feedback_max": MAX_CORRECTIONS},
                   "verdict": verdict, "results": results}, f, indent=1)
    print("verdict: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in verdict.items()))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
