"""Handwriting evaluation: held-out MNIST digits written on the real page, stroke by stroke.

Each of the last 1,000 digits of training/sample (the validation split that training
never sees) is thinned to a skeleton (Zhang-Suen), traced into pen strokes, and replayed
with mouse events on the DigitDraw page in Chromium, at several sizes, positions and pen
widths (bench/handwriting.py: VARIANTS). The page sends its canvas to the real
service, which preprocesses it and runs the model; the eval reads the page's answer.

    python bench/handwriting_eval.py --model-uri model-store        # starts the service
    python bench/handwriting_eval.py --url http://127.0.0.1:8080    # a running one

Writing is bound by the browser's input latency (each mouse move waits for a frame), not
by CPU, so --jobs browsers write in parallel; the result does not depend on --jobs.

Prints the accuracy, per variant and per digit, and writes everything (with the wrong
answers' confusion) to bench/results/handwriting.json; --failures also saves a contact
sheet of the wrong ones (what was drawn, and what the model saw).
"""
import argparse
import base64
import io
import json
import multiprocessing
import os
import platform
import signal
import sys
import time
from collections import Counter

from bench.handwriting import VARIANTS, validation_digits
from bench.page import accuracy, launch_browser, replay_handwriting, require_chromium
from bench import ROOT
from bench.servers import service


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", default=os.environ.get("MODEL_URI", "model-store"),
                   help="model store the started service loads (env MODEL_URI; default model-store)")
    p.add_argument("--url", default=None,
                   help="evaluate a running service at this URL instead of starting one")
    p.add_argument("--count", type=int, default=1000,
                   help="how many held-out digits (the last COUNT of the sample; default 1000)")
    p.add_argument("--every-variant", action="store_true",
                   help="write every digit in every variant (5x the time); default: round robin")
    p.add_argument("--seed", type=int, default=0, help="seed for the size/position jitter")
    p.add_argument("--jobs", type=int, default=2, help="browsers writing in parallel (default 2)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "handwriting.json"))
    p.add_argument("--failures", action="store_true",
                   help="also save a contact sheet of the wrong answers next to --out")
    return p.parse_args()


def failure_sheet(records, images, path, columns=10):
    """Tiles of (MNIST original | what was drawn | what the model saw) for wrong answers."""
    from PIL import Image, ImageDraw

    wrong = [r for r in records if "pad" in r][:100]
    if not wrong:
        return None
    tile = 84
    columns = min(columns, len(wrong))
    rows = (len(wrong) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * 3 * tile, rows * (tile + 14)), "white")
    draw = ImageDraw.Draw(sheet)

    def from_data_url(url):
        return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")

    for k, r in enumerate(wrong):
        x, y = (k % columns) * 3 * tile, (k // columns) * (tile + 14)
        sheet.paste(Image.fromarray(images[r["id"]]).convert("RGB").resize((tile, tile)), (x, y))
        sheet.paste(from_data_url(r["pad"]).resize((tile, tile)), (x + tile, y))
        sheet.paste(from_data_url(r["preview"]).resize((tile, tile), Image.NEAREST), (x + 2 * tile, y))
        draw.text((x + 2, y + tile), f"{r['label']} read {r['read'] or '-'} ({r['variant']})", fill="black")
    sheet.save(path)
    return path


def write_chunk(job):
    """In a worker process: its own Chromium writes the digits ``ids`` on the page at ``url``."""
    from playwright.sync_api import sync_playwright

    url, count, ids, every_variant, seed, keep_failures, worker = job
    images, labels, _ = validation_digits(count)
    started = time.monotonic()

    def progress(done, total):
        print(f"  worker {worker}: {done}/{total} written, {time.monotonic() - started:.0f} s", flush=True)

    with sync_playwright() as p:
        browser = launch_browser(p)
        records = replay_handwriting(browser, url, images[ids], labels[ids], ids=ids, every_variant=every_variant,
                                     seed=seed, progress=progress, keep_failures=keep_failures)
        browser.close()
    return records


def main():
    args = parse_args()
    # Stopped with SIGTERM, still stop the service we started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    require_chromium()
    images, labels, indices = validation_digits(args.count)
    print(f"handwriting eval: {len(images)} held-out digits, "
          f"{'every variant' if args.every_variant else 'one variant each (round robin)'}", flush=True)

    server = None if args.url else service(os.path.abspath(args.model_uri)).wait_ready()
    url = (args.url or server.url).rstrip("/")
    started = time.monotonic()
    try:
        import urllib.request

        with urllib.request.urlopen(f"{url}/model", timeout=10) as r:
            model = json.load(r)
        ids = list(range(len(images)))
        jobs = [(url, args.count, ids[w::args.jobs], args.every_variant, args.seed, args.failures, w)
                for w in range(args.jobs)]
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            records = [r for chunk in pool.map(write_chunk, jobs) for r in chunk]
    finally:
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - started

    by_variant = {v["name"]: accuracy([r for r in records if r["variant"] == v["name"]]) for v in VARIANTS}
    by_digit = {d: accuracy([r for r in records if r["label"] == d]) for d in range(10)}
    confusions = Counter(f"{r['label']}->{r['read'] or 'error'}" for r in records if r["read"] != str(r["label"]))
    result = {
        "accuracy": accuracy(records),
        "writings": len(records),
        "digits": len(images),
        "by_variant": by_variant,
        "variants": VARIANTS,
        "by_digit": by_digit,
        "confusions": dict(confusions.most_common()),
        "jobs": args.jobs,
        "wrong": [{k: r[k] for k in ("id", "label", "read", "variant")} | {"sample_index": int(indices[r["id"]])}
                  for r in records if r["read"] != str(r["label"])],
        "model_version": model.get("version"),
        "model_metrics": model.get("metrics"),
        "seconds": round(elapsed, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.failures:
        sheet = failure_sheet(records, images, os.path.splitext(args.out)[0] + "-failures.png")
        if sheet:
            print(f"wrong answers: {sheet}")

    print(f"accuracy {100 * result['accuracy']:.1f}% on {len(records)} writings of {len(images)} digits "
          f"(model {result['model_version']}, {elapsed:.0f} s)")
    for name, acc in by_variant.items():
        print(f"  {name:14s} {100 * acc:5.1f}%")
    print("  per digit: " + "  ".join(f"{d}:{100 * a:.0f}%" for d, a in by_digit.items()))
    print(f"  most common mistakes: {', '.join(f'{k} x{n}' for k, n in confusions.most_common(8)) or 'none'}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
