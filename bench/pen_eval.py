"""Held-out pen writers through the page: pen digits by writers training never saw, read by the service.

The bundled pen digits of the writers training holds out (training/pen.py: split) are written
on the pad in pen_val's ways (training/pen.py: VAL_WAYS: sizes, places and pen widths),
rendered by the page's own pad.js and encoded by its png.js in Chromium (bench/page.py:
render_canvases), and posted to the service's /predict as the page posts them. The same
strokes also go through training's renderer (training/render.py), and their canvases are
posted too: the figures say how often the page's 28x28 input and training's are identical,
and how often the model reads the same digit in both.

    python -m bench.pen_eval --model-uri model-store          # starts the service
    python -m bench.pen_eval --url http://127.0.0.1:8080      # a running one

Prints the accuracy overall, per digit and per way of writing, and the most common
misreadings; writes everything to bench/results/pen-<UTC time>.json.
"""
import argparse
import json
import os
import signal
import sys
import time
from collections import Counter

import numpy as np

from bench import ROOT, machine
from bench.page import render_canvases, require_chromium
from bench.servers import service
from bench.styles import predict
from service import contract, png, preprocess
from training import pen, render


def read(url, pngs, progress=None):
    """The digit the service at ``url`` reads in each PNG (int), and its 28x28 previews."""
    digits = []
    for k, data in enumerate(pngs):
        digits.append(int(predict(url, data)["digit"]))
        if progress and (k + 1) % 250 == 0:
            progress(k + 1, len(pngs))
    return np.array(digits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default=os.environ.get("MODEL_URI", "model-store"),
                    help="model store the started service loads (env MODEL_URI; default model-store)")
    ap.add_argument("--url", default=None, help="read with a running service at this URL instead of starting one")
    ap.add_argument("--out", default=None, help="result file (default bench/results/pen-<time>.json)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped, still stop the service we started
    require_chromium()

    _, held = pen.split(pen.load())
    drawings = pen.val_drawings(held)
    labels = held.labels.astype(int)
    print(f"pen eval: {len(labels):,} digits by {len(set(held.writers))} held-out writers; rendering in Chromium",
          flush=True)
    page_pngs = render_canvases([{"strokes": [s.tolist() for s in strokes], "width": width}
                                 for strokes, width in drawings])
    renderer = render.Renderer()
    ours = [renderer.render(strokes, width) for strokes, width in drawings]
    limits = preprocess.Limits(10 ** 6)
    identical = sum(np.array_equal(contract.to_pixels(preprocess.preprocess(data, limits)), render.to_digit(grey))
                    for data, grey in zip(page_pngs, ours))

    server = None if args.url else service(os.path.abspath(args.model_uri)).wait_ready()
    url = (args.url or server.url).rstrip("/")
    started = time.monotonic()
    try:
        import urllib.request

        with urllib.request.urlopen(f"{url}/model", timeout=10) as r:
            model = json.load(r)

        def progress(done, total):
            print(f"  {done}/{total} read, {time.monotonic() - started:.0f} s", flush=True)

        read_page = read(url, page_pngs, progress)
        read_ours = read(url, [png.grey(grey) for grey in ours])
    finally:
        if server is not None:
            server.stop()

    right = read_page == labels
    ways = np.arange(len(labels)) % len(pen.VAL_WAYS)
    by_digit = {d: round(float(right[labels == d].mean()), 4) for d in range(10)}
    by_way = {f"size {size}, pen {width}": round(float(right[ways == w].mean()), 4)
              for w, (size, _, width) in enumerate(pen.VAL_WAYS)}
    confusions = Counter(f"{t}->{p}" for t, p in zip(labels, read_page) if t != p)
    result = {
        "accuracy": round(float(right.mean()), 5), "digits": int(len(labels)),
        "writers": len(set(held.writers)), "weakest_digit": min(by_digit, key=by_digit.get),
        "weakest_accuracy": min(by_digit.values()), "by_digit": by_digit, "by_way": by_way,
        "confusions": dict(confusions.most_common()),
        "inputs_identical_to_training": int(identical), "same_reading_as_training": int((read_page == read_ours).sum()),
        "model_version": model.get("version"), "model_metrics": model.get("metrics"),
        "seconds": round(time.monotonic() - started, 1), "machine": machine.describe(gauge=False),
    }
    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("pen-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"accuracy {100 * result['accuracy']:.2f}% on {len(labels):,} held-out pen digits "
          f"(model {result['model_version']}); weakest digit {result['weakest_digit']} "
          f"{100 * result['weakest_accuracy']:.1f}%")
    print("  per digit: " + "  ".join(f"{d}:{100 * a:.1f}%" for d, a in by_digit.items()))
    for name, acc in by_way.items():
        print(f"  {name:22s} {100 * acc:5.1f}%")
    print(f"  most common mistakes: {', '.join(f'{k} x{n}' for k, n in confusions.most_common(8)) or 'none'}")
    print(f"  the page's 28x28 inputs identical to training's renderer on {identical} of {len(labels)}; "
          f"the same reading on {result['same_reading_as_training']} of {len(labels)}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
