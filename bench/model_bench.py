"""CPU time per request of the service with different models or canvases, measured in-process.

For each store (its LATEST model) and each kind of canvas it builds the Flask app and
times, on one thread:
  - ONNX Runtime alone: one 28x28 image per call, as /predict runs it;
  - the whole request: POST /predict with a 280x280 canvas PNG as a JSON data URL and the
    preview asked for (the frontend's own body, its drawing rendered in Chromium, unless
    --canvases says otherwise), through the WSGI app (parsing, decoding, preprocessing,
    inference, the preview, JSON, metrics, log line), without sockets or a server.
Blocks of requests alternate between the cases, and the figures are the median and the
minimum over blocks (CPU time, time.thread_time): this VM's speed wanders by 1.5-2x within
minutes, and contention only ever adds time, so the minimum is the steadiest comparison and
the ratio between cases within one run is what to read.

    python bench/model_bench.py --store model-store --store /path/to/float-model-store
    python bench/model_bench.py --store model-store --canvases frontend --canvases frontend-rgba

Results go to bench/results/model-<UTC time>.json.
"""
import argparse
import io
import json
import os
import statistics
import sys
import time

import numpy as np

from bench import machine
from bench.canvases import CANVASES
from bench.load import predict_body
from bench import ROOT
from service.app import create_app
from service.contract import INPUT_SHAPE


def environ(body):
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080",
            "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1", "wsgi.url_scheme": "http",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", action="append", required=True, help="a model store (repeat to compare)")
    ap.add_argument("--blocks", type=int, default=20, help="blocks per case, taken in turn (default 20)")
    ap.add_argument("--block-size", type=int, default=200, help="requests per block (default 200)")
    ap.add_argument("--canvases", choices=CANVASES, action="append",
                    help="the PNGs posted, as in serve_bench.py (repeat to compare; default: the frontend's own)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/model-<time>.json)")
    args = ap.parse_args()

    canvases = args.canvases or ["frontend"]
    bodies = {name: [predict_body(png) for png in CANVASES[name](32)] for name in canvases}
    images = np.random.default_rng(0).random((32, 1, *INPUT_SHAPE[1:]), dtype=np.float32)
    apps = {}
    for store in args.store:
        # LOG_LEVEL info as deployed; the log lines go to /dev/null.
        app = create_app({"MODEL_URI": store, "MODEL_POLL_SECONDS": 0, "LOG_LEVEL": "INFO"})
        if not app.model_holder.wait_ready(60):
            sys.exit(f"error: no model loaded from {store}")
        apps[store] = app
    stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)

    def start_response(status, headers, exc_info=None):
        assert status.startswith("200"), status

    def request_block(app, bodies):
        t = time.thread_time()
        for i in range(args.block_size):
            b"".join(app.wsgi_app(environ(bodies[i % len(bodies)]), start_response))
        return (time.thread_time() - t) / args.block_size * 1000

    def inference_block(app):
        model = app.model_holder.current
        t = time.thread_time()
        for i in range(args.block_size):
            model.logits(images[i % len(images)])
        return (time.thread_time() - t) / args.block_size * 1000

    cases = [(store, name) for store in apps for name in canvases]
    try:
        for store, name in cases:  # warm up
            request_block(apps[store], bodies[name])
        times = {case: {"request": [], "inference": []} for case in cases}
        for _ in range(args.blocks):
            for store, name in cases:
                times[store, name]["request"].append(request_block(apps[store], bodies[name]))
                times[store, name]["inference"].append(inference_block(apps[store]))
    finally:
        os.dup2(stderr, 2)

    results = {"machine": machine.describe(), "blocks": args.blocks, "block_size": args.block_size, "cases": []}
    for store, name in cases:
        model = apps[store].model_holder.current
        entry = {"store": store, "canvases": name, "body_bytes": round(statistics.mean(map(len, bodies[name]))),
                 "version": model.version, "quantization": model.meta.get("quantization", {}).get("scheme", "none"),
                 "model_bytes": model.meta.get("size_bytes")}
        for kind, values in times[store, name].items():
            entry[f"{kind}_cpu_ms"] = {"median": round(statistics.median(values), 4), "min": round(min(values), 4)}
        results["cases"].append(entry)
        print(f"{store} ({entry['version']}, {entry['quantization']}, {entry['model_bytes']:,} bytes), {name} "
              f"canvases: request {entry['request_cpu_ms']['median']:.3f} ms "
              f"(min {entry['request_cpu_ms']['min']:.3f}), inference {entry['inference_cpu_ms']['median']:.3f} ms "
              f"(min {entry['inference_cpu_ms']['min']:.3f})")
    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("model-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
