"""The review page's queue (training/review/queue.py) on a large feedback store: its first read,
a refresh when a few records arrive, and what one page costs.

    python -m bench.review_bench [--records 20000] [--new 100] [--store DIR] [--out FILE.json]

Records are written in the store layout by the service's own ``_store`` (a record and its
day marker, create-only), with random pixels: a few clients send many, most one or two.
Prints one JSON object: seconds for the first read (every record read once), for a refresh
after ``--new`` more arrive (one listing, those records read), for the first page of the
default view (its order computed) and the next (the order reused), the page's size in bytes,
and the memory the queue added.
"""
import argparse
import base64
import datetime
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np

from bench.machine import describe
from service import contract
from service.feedback import _store
from service.store import open_store
from training.review.queue import Query, Queue


def write_records(store, n, seed):
    """``n`` records of random drawings in ``store``, as the service writes them."""
    rng = np.random.default_rng(seed)
    now = datetime.datetime.now(datetime.timezone.utc)
    for i in range(n):
        pixels = (rng.random(contract.SIDE * contract.SIDE) < 0.15).astype(np.uint8) * contract.PIXEL_MAX
        client = f"client-{int(rng.pareto(1.2) * 3) % 5000}"
        label = int(rng.integers(10))
        at = now - datetime.timedelta(seconds=int(rng.integers(0, 7 * 86400)))
        record = {"id": hashlib.sha256(pixels.tobytes()).hexdigest(),
                  "pixels": base64.b64encode(pixels.tobytes()).decode(), "label": label,
                  "predicted": int((label + rng.integers(1, 10)) % 10), "model_version": None, "client_id": client,
                  "created_at": f"{at:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z"}
        _store(store, record, f"{at:%Y-%m-%d}")


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.review_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--store", help="a directory to build the store in (default: a temporary one, removed after)")
    parser.add_argument("--out", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    root = args.store or tempfile.mkdtemp(prefix="review-bench-")
    os.makedirs(root, exist_ok=True)
    try:
        store = open_store(root)
        t = time.perf_counter()
        write_records(store, args.records, seed=0)
        print(f"wrote {args.records:,} records in {time.perf_counter() - t:.1f} s", flush=True)
        before = rss_mib()
        queue = Queue(store, refresh_seconds=0)
        t = time.perf_counter()
        queue.refresh(force=True)
        first = time.perf_counter() - t
        added = rss_mib() - before
        write_records(store, args.new, seed=1)
        t = time.perf_counter()
        queue.refresh(force=True)
        incremental = time.perf_counter() - t
        queue.refresh_seconds = 3600  # the pages below time the page, not another listing
        t = time.perf_counter()
        page = queue.page(Query())
        first_page = time.perf_counter() - t
        t = time.perf_counter()
        second = queue.page(Query(cursor=page["next"]))
        next_page = time.perf_counter() - t
        result = {"records": len(queue.items), "first_read_s": round(first, 2), "refresh_after_new_s":
                  round(incremental, 3), "new": args.new, "first_page_s": round(first_page, 3),
                  "next_page_s": round(next_page, 4), "page_records": len(second["records"]),
                  "page_bytes": len(json.dumps(page, separators=(",", ":"))), "memory_mib": round(added, 1),
                  "machine": describe()}
        print(json.dumps(result, indent=2))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
        return result
    finally:
        if not args.store:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
