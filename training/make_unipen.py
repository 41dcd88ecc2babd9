"""Build the bundled pen digits (training/unipen/digits.npz) from the UNIPEN JSON lines.

    python -m training.make_unipen ../shared/unipen/digits-dev.jsonl.gz training/unipen/digits.npz

The input is one JSON object a line: ``{"label": "4", "writer": "...", "strokes": [[[x, y],
...], ...]}``, coordinates on one physical scale, y down (training/unipen/README.md). Each
digit is scaled so that its longer side spans 0..255 and its points are rounded to that
grid: a point moves by at most 1/510 of the digit's size, a fortieth of a pixel of the
20-pixel digit the model sees. A point equal to the one before it in its stroke is dropped
(the page drops such points too). The output is deterministic: rerunning reproduces it
byte for byte. training/pen.py reads it.
"""
import argparse
import gzip
import json
import os
import zipfile

import numpy as np

from training.pen import GRID


def encode(rows):
    """The arrays of digits.npz (training/pen.py: load says what each holds) for ``rows``,
    the parsed JSON objects in their order."""
    writers = sorted({r["writer"] for r in rows})
    index = {w: k for k, w in enumerate(writers)}
    labels, writer_ids, strokes_per_digit, points_per_stroke, deltas = [], [], [], [], []
    for r in rows:
        strokes = [np.asarray(s, dtype=np.float64).reshape(-1, 2) for s in r["strokes"]]
        points = np.concatenate(strokes)
        lo = points.min(axis=0)
        span = max(float((points.max(axis=0) - lo).max()), 1e-9)
        labels.append(int(r["label"]))
        writer_ids.append(index[r["writer"]])
        strokes_per_digit.append(len(strokes))
        for s in strokes:
            q = np.round((s - lo) / span * GRID).astype(np.int64)
            q = q[np.r_[True, (np.diff(q, axis=0) != 0).any(axis=1)]]
            points_per_stroke.append(len(q))
            # Each point as its step from the one before (the first from 0), modulo 256: small
            # steps compress well, and a running sum modulo 256 gives the points back exactly.
            deltas.append(np.diff(q, axis=0, prepend=0) % 256)
    return {"labels": np.array(labels, np.uint8), "writers": np.array(writer_ids, np.uint16),
            "writer_names": np.array(writers), "strokes_per_digit": np.array(strokes_per_digit, np.uint8),
            "points_per_stroke": np.array(points_per_stroke, np.uint16),
            "deltas": np.ascontiguousarray(np.concatenate(deltas).T.astype(np.uint8))}


def write_npz(path, arrays):
    """A compressed .npz whose bytes depend on ``arrays`` only (fixed member times)."""
    import io

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue(), compresslevel=9)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="the UNIPEN digits as gzipped JSON lines (digits-dev.jsonl.gz)")
    parser.add_argument("out", help="the .npz to write")
    args = parser.parse_args()
    with gzip.open(args.source, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    arrays = encode(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_npz(args.out, arrays)
    print(f"wrote {len(rows):,} digits by {len(arrays['writer_names'])} writers, "
          f"{arrays['deltas'].shape[1]:,} points, to {args.out} ({os.path.getsize(args.out):,} bytes); "
          f"per class {np.bincount(arrays['labels'], minlength=10).tolist()}")


if __name__ == "__main__":
    main()
