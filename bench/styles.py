"""Synthetic handwriting in the styles MNIST's scanned forms rarely show, by many writers.

People draw differently from MNIST: most misses on real pen digits are 1s written with a
flag or a base bar and 0s left open or drawn in two strokes. This module writes such
styles (``STYLES``), and every other digit in the usual way (bench/handwriting.py
DIGITS), each by seeded "writers" with their own slant, proportions, size, pen and hand:

- ``writers(n, seed)``: n distinct writers; different seeds give disjoint sets
  (``TRAIN_SEED`` writes corrections, ``EVAL_SEED`` evaluates);
- ``write(style_or_digit, writer, k)``: the writer's k-th writing of a style name or a
  digit, as pen strokes in the unit box (x right, y down);
- ``drawings(writers, items)``: writings placed on the pad with the writer's size and
  pen, ready for bench/page.render_canvases;
- ``read_drawings(url, drawings)``: what a running service reads in them (POST /predict,
  as the page sends them).

    python -m bench.styles --model-uri model-store     # per-style accuracy and a contact sheet

The contact sheet shows each writing as drawn and the 28x28 input the model saw, to
check by eye that the styles are easy to read for a person.
"""
import argparse
import dataclasses
import json
import math
import os
import urllib.request
from collections import Counter, defaultdict

import numpy as np

from bench import ROOT
from bench.handwriting import DIGITS, catmull_rom, densify, ellipse, place

TRAIN_SEED, EVAL_SEED = 1, 2


@dataclasses.dataclass(frozen=True)
class Writer:
    """One person's hand: how they slant, stretch and size digits, and how they write the styles."""

    id: str
    slant: float        # shear: the top of a digit stands right of its foot by this much of its height
    rotation: float     # radians, clockwise on screen
    aspect: float       # width multiplier
    size: float         # the longer side of a digit, a fraction of the pad
    center: tuple       # where on the pad they write
    width: float        # pen width, a fraction of the pad
    jitter: float       # amplitude of the hand's wobble, in the unit box
    wobble: tuple       # its frequencies along a stroke (x, y)
    flag_len: float     # 1: the hooked top stroke, a fraction of the height
    flag_angle: float   # 1: the flag's angle below horizontal, radians
    base_len: float     # 1: the base bar's length
    crossbar_len: float  # 7: the crossbar's length
    arm_lean: float     # 4: how far the open 4's left arm leans out at its top
    gap: float          # 0: the opening, in pen widths
    gap_at: float       # 0: where it opens, radians clockwise from the top
    roundness: float    # 0: width over height
    offset: float       # 0 in two strokes: how far right of the left half the right half lands


# Each writer's hand is drawn uniformly from these ranges (a pair of ranges for a pair).
RANGES = {
    "slant": (-0.12, 0.32), "rotation": (-0.08, 0.08), "aspect": (0.75, 1.15), "size": (0.5, 0.82),
    "center": ((0.42, 0.58), (0.42, 0.58)), "width": (0.06, 0.11), "jitter": (0.004, 0.014),
    "wobble": ((0.6, 1.8), (0.6, 1.8)), "flag_len": (0.3, 0.5), "flag_angle": (0.5, 0.9), "base_len": (0.35, 0.6),
    "crossbar_len": (0.3, 0.5), "arm_lean": (-0.04, 0.08), "gap": (1.6, 3.0), "gap_at": (-0.6, 0.6),
    "roundness": (0.6, 1.0), "offset": (0.0, 0.06),
}


def _draw(rng, spec):
    if isinstance(spec[0], tuple):
        return tuple(_draw(rng, s) for s in spec)
    return float(rng.uniform(*spec))


def writers(n, seed):
    """``n`` distinct writers, the same for the same seed; writers of different seeds never coincide."""
    out = []
    for k in range(n):
        rng = np.random.default_rng([seed, k])
        out.append(Writer(id=f"writer-{seed}-{k}", **{name: _draw(rng, spec) for name, spec in RANGES.items()}))
    return out


# --- the styles: each a function of the writing's parameters giving strokes -------------

def _pen(p):
    """The pen's width in the unit box a digit is written in."""
    return p.width / p.size


def _one_flag(p, base=False):
    top, bottom = (0.55, 0.0), (0.5, 1.0)
    # However thick the pen, the flag stands out from the stem by a pen width and a half.
    length = max(p.flag_len, 1.5 * _pen(p) / math.cos(p.flag_angle))
    tip = (top[0] - length * math.cos(p.flag_angle), top[1] + length * math.sin(p.flag_angle))
    strokes = [densify([tip, top, bottom], 0.02)]
    if base:
        # The bar reaches past the stem on both sides, by more than the pen is wide.
        half = max(p.base_len / 2, 2 * _pen(p) / p.aspect)
        strokes.append(densify([(bottom[0] - half, 1.0), (bottom[0] + half, 1.0)], 0.02))
    return strokes


def _seven_crossbar(p):
    # A tick down at the start, the top bar, the stem, and the crossbar through its middle.
    tick, top_left, top_right, foot = (0.1, 0.2), (0.12, 0.05), (0.88, 0.05), (0.42, 1.0)
    mid = ((top_right[0] + foot[0]) / 2, (top_right[1] + foot[1]) / 2)
    half = p.crossbar_len / 2
    return [densify([tick, top_left, top_right, foot], 0.02),
            densify([(mid[0] - half, mid[1]), (mid[0] + half, mid[1])], 0.02)]


def _four_open(p):
    # The left arm stands upright, as high as the stem beside it, and comes down into a
    # rounded corner: the top never closes.
    left = catmull_rom([(0.2 + p.arm_lean, 0.0), (0.2, 0.3), (0.26, 0.52), (0.45, 0.6), (0.88, 0.58)])
    return [left, densify([(0.68, 0.0), (0.66, 1.0)], 0.02)]


_RY = 0.46  # a 0's half height in the unit box


def _gap_angle(p, rx, at):
    """The angle a gap of ``p.gap`` pen widths spans on the 0's ellipse around angle ``at``."""
    return p.gap * _pen(p) / math.hypot(rx * math.sin(at), _RY * math.cos(at))


def _zero_open(p):
    rx, at = _RY * p.roundness, -0.5 * math.pi + p.gap_at
    gap = _gap_angle(p, rx, at)
    return [ellipse(0.5, 0.5, rx, _RY, start=at - gap / 2, turns=1 - gap / (2 * math.pi), n=48)]


def _zero_two_strokes(p):
    # The left half, then the right half, each from the top down; they miss each other at
    # both ends.
    rx = _RY * p.roundness
    half_gap = _gap_angle(p, rx, -0.5 * math.pi) / 2
    left = ellipse(0.5, 0.5, rx, _RY, start=-0.5 * math.pi - half_gap, turns=0.5 - half_gap / math.pi, n=24)
    return [left, [(1 - x + p.offset, y) for x, y in left]]


# Style name -> (digit, how it is written).
STYLES = {
    "1-flag": (1, _one_flag),
    "1-flag-base": (1, lambda p: _one_flag(p, base=True)),
    "7-crossbar": (7, _seven_crossbar),
    "4-open": (4, _four_open),
    "0-open": (0, _zero_open),
    "0-two-strokes": (0, _zero_two_strokes),
}
# Corrections cover every digit: the styles, and the digits they do not write the usual way.
CORRECTION_ITEMS = list(STYLES) + [d for d in range(10) if d not in {digit for digit, _ in STYLES.values()}]
EVAL_ITEMS = list(STYLES) + list(range(10))


def label(item):
    """The digit a style name (or a digit) stands for."""
    return STYLES[item][0] if isinstance(item, str) else int(item)


# --- a writer's hand -------------------------------------------------------------------

def _writing(writer, item, k):
    """The writer's parameters for their k-th writing of ``item`` (nobody writes the same
    way twice), and a random generator for it."""
    rng = np.random.default_rng([*writer.id.encode(), 0, *str(item).encode(), 0, k])
    vary = lambda v, spread: v + float(rng.normal(0, spread))
    return dataclasses.replace(
        writer, slant=vary(writer.slant, 0.04), rotation=vary(writer.rotation, 0.02),
        aspect=vary(writer.aspect, 0.04), size=vary(writer.size, 0.03),
        center=(vary(writer.center[0], 0.02), vary(writer.center[1], 0.02)),
        flag_len=vary(writer.flag_len, 0.03), flag_angle=vary(writer.flag_angle, 0.08),
        gap=max(1.5, vary(writer.gap, 0.2)), gap_at=vary(writer.gap_at, 0.1)), rng


def _hand(strokes, p, rng):
    """Strokes as the hand ``p`` writes them: stretched, slanted, turned and wobbling."""
    cos, sin = math.cos(p.rotation), math.sin(p.rotation)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    out = []
    for stroke in strokes:
        pts = np.asarray(stroke, dtype=float)
        x = 0.5 + (pts[:, 0] - 0.5) * p.aspect + p.slant * (0.5 - pts[:, 1])
        y = pts[:, 1]
        x, y = 0.5 + (x - 0.5) * cos - (y - 0.5) * sin, 0.5 + (x - 0.5) * sin + (y - 0.5) * cos
        along = np.concatenate([[0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
        x = x + p.jitter * np.sin(2 * math.pi * p.wobble[0] * along + phase[0])
        y = y + p.jitter * np.sin(2 * math.pi * p.wobble[1] * along + phase[1])
        out.append(list(zip(x.tolist(), y.tolist())))
    return out


def _write(item, writer, k):
    p, rng = _writing(writer, item, k)
    strokes = STYLES[item][1](p) if isinstance(item, str) else DIGITS[int(item)]
    return p, place(_hand(strokes, p, rng), size=1.0, margin=0.0)


def write(item, writer, k=0):
    """The writer's k-th writing of ``item`` (a STYLES name, or a digit 0-9 written the usual
    way) as pen strokes in the unit box: lists of (x, y) in [0, 1], in writing order. On
    the pad it is ``pen_width(item, writer, k)`` units of this box wide."""
    return _write(item, writer, k)[1]


def pen_width(item, writer, k=0):
    """The pen's width in the unit box of ``write(item, writer, k)``: what a gap must beat to show."""
    return _pen(_writing(writer, item, k)[0])


def drawings(writer_list, items, per_writer=1):
    """Each writer writes each item ``per_writer`` times, placed on the pad at their size
    and place: dicts of ``strokes`` (pad fractions) and pen ``width`` (render_canvases's
    input) with the ``label``, ``item`` (as a string), ``writer`` id and ``k``."""
    out = []
    for k in range(per_writer):
        for w in writer_list:
            for item in items:
                p, strokes = _write(item, w, k)
                out.append({"strokes": place(strokes, p.size, p.center), "width": w.width,
                            "label": label(item), "item": str(item), "writer": w.id, "k": k})
    return out


def sample(writer_list, items, count, seed=0):
    """``count`` different writings of ``items`` by the writers, a seeded random choice
    spread over all of them (``drawings`` as many times over as it takes)."""
    per_writer = -(-count // (len(writer_list) * len(items)))
    everything = drawings(writer_list, items, per_writer)
    chosen = np.random.default_rng(seed).permutation(len(everything))[:count]
    return [everything[i] for i in sorted(chosen)]


# --- reading them with the service -----------------------------------------------------

def predict(url, png):
    """POST ``png`` to ``url``/predict exactly as the page does; the JSON answer."""
    from bench.load import predict_body

    req = urllib.request.Request(f"{url}/predict", data=predict_body(png),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def read_drawings(url, drawing_list, pngs):
    """What the service at ``url`` reads in each drawing (its rendered ``pngs``): records
    of label, item, writer, read digit, model version and the 28x28 preview data URL."""
    records = []
    for d, png in zip(drawing_list, pngs):
        answer = predict(url, png)
        records.append({"label": d["label"], "item": d["item"], "writer": d["writer"], "read": answer["digit"],
                        "model_version": answer["model_version"], "preview": answer["preview"]})
    return records


def summary(records):
    """Per item (the styles, then the usual digits, each group followed by its total
    "styles" / "usual"): {"n", "accuracy", "misread_as": {digit: times}}."""
    groups = defaultdict(list)
    for r in records:
        groups[r["item"]].append(r)
        groups["styles" if r["item"] in STYLES else "usual"].append(r)
    order = [*STYLES, "styles", *map(str, range(10)), "usual"]
    out = {}
    for item in [i for i in order if i in groups]:
        rs = groups[item]
        wrong = Counter(str(r["read"]) for r in rs if r["read"] != r["label"])
        out[item] = {"n": len(rs), "accuracy": round(sum(r["read"] == r["label"] for r in rs) / len(rs), 4),
                     "misread_as": dict(wrong.most_common())}
    return out


def contact_sheet(records, pngs, path, columns=12):
    """A grid of (drawing | what the model saw) tiles captioned "item -> read", for the eye."""
    import base64
    import io

    from PIL import Image, ImageDraw

    tile = 84
    rows = -(-len(records) // columns)
    sheet = Image.new("RGB", (columns * 2 * tile, rows * (tile + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (r, png) in enumerate(zip(records, pngs)):
        x, y = (i % columns) * 2 * tile, (i // columns) * (tile + 14)
        sheet.paste(Image.open(io.BytesIO(png)).convert("RGB").resize((tile, tile)), (x, y))
        preview = Image.open(io.BytesIO(base64.b64decode(r["preview"].split(",", 1)[1]))).convert("RGB")
        sheet.paste(preview.resize((tile, tile), Image.NEAREST), (x + tile, y))
        ok = r["read"] == r["label"]
        draw.text((x + 2, y + tile), f"{r['item']} -> {r['read']}", fill="black" if ok else "red")
    sheet.save(path)
    return path


def main():
    from bench.page import render_canvases
    from bench.servers import service

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-uri", default=os.environ.get("MODEL_URI", "model-store"),
                    help="model store the started service loads (env MODEL_URI; default model-store)")
    ap.add_argument("--url", default=None, help="read with a running service at this URL instead of starting one")
    ap.add_argument("--writers", type=int, default=20, help="how many writers write every style and digit (default 20)")
    ap.add_argument("--seed", type=int, default=EVAL_SEED, help=f"the writers' seed (default {EVAL_SEED})")
    ap.add_argument("--sheet", default=os.path.join(ROOT, "bench", "results", "styles-sheet.png"),
                    help="where to save the contact sheet")
    args = ap.parse_args()

    drawing_list = drawings(writers(args.writers, args.seed), EVAL_ITEMS)
    print(f"styles: {len(drawing_list)} writings by {args.writers} writers (seed {args.seed}); rendering", flush=True)
    pngs = render_canvases([{"strokes": d["strokes"], "width": d["width"]} for d in drawing_list])
    server = None if args.url else service(os.path.abspath(args.model_uri)).wait_ready()
    try:
        records = read_drawings((args.url or server.url).rstrip("/"), drawing_list, pngs)
    finally:
        if server is not None:
            server.stop()
    for item, r in summary(records).items():
        misread = ", ".join(f"{d} x{n}" for d, n in r["misread_as"].items())
        print(f"  {item:14s} {100 * r['accuracy']:5.1f}% of {r['n']:4d}" + (f"  (read as {misread})" if misread else ""))
    os.makedirs(os.path.dirname(os.path.abspath(args.sheet)), exist_ok=True)
    print(f"contact sheet: {contact_sheet(records, pngs, args.sheet)} (model {records[0]['model_version']})")


if __name__ == "__main__":
    main()
