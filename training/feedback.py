"""The corrections people sent (POST /feedback): as training data, and for an operator to review.

``load(uri)`` reads every accepted record of a feedback store (service/contract.py has the
layout): not rejected by an operator, readable, and well-formed. A record that is not is
skipped and counted, with its id in the log; it never stops a run. ``split`` holds out a
fixed share of the writers, by client id, as the real-drawings validation set, so that no
writer is on both sides: the set measures how well the model reads people it has not learnt from.

People send junk, so an operator looks before training trusts it: the review CLI
(``python -m training.feedback --help``) counts what came in by day, label and misreading
(``stats``), lists the newest records (``list``), shows one with its digit drawn in the
terminal (``show``), draws a contact sheet of the digits as a PNG (``sheet``), and
``reject``s a record: ``rejected/<id>.json`` says who and why, ``load`` leaves the record
out, and the record itself stays, for audit. It goes through the store client only, so a
directory, a PVC mount and ``gs://bucket/prefix`` behave alike.
"""
import argparse
import base64
import collections
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import sys
import tempfile

import numpy as np

from service import contract
from service.store import AlreadyExists, LocalStore, StoreError, StoreNotFound, StoreUnreachable, open_store
from training.registry import (EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, RegistryError,
                               _dump, _now, _table, actor, run_cli, store_cli)

HOLDOUT_SHARE = 0.2  # of writers (client ids), held out as the real-drawings validation set
READERS = 16         # records read at once: a GCS read is a round trip of tens of ms


@dataclasses.dataclass
class Corrections:
    """uint8 digits [N, 28, 28] as the model saw them, their labels [N], and who wrote them."""

    x: np.ndarray
    y: np.ndarray
    writers: list
    ids: list
    skipped: dict  # record id -> why it was skipped

    def __len__(self):
        return len(self.y)

    def subset(self, keep):
        keep = np.asarray(keep, dtype=bool)
        return Corrections(self.x[keep], self.y[keep], [w for w, k in zip(self.writers, keep) if k],
                           [i for i, k in zip(self.ids, keep) if k], {})


def _digit(value):
    return type(value) is int and 0 <= value < contract.CLASSES  # bool is an int subclass; it is not a digit


def check(raw, record_id):
    """(the record as a dict, its pixels uint8 [28, 28]) of one record's bytes, if it is a
    record the service could have written; ValueError says what is wrong."""
    record = json.loads(raw)
    if not isinstance(record, dict):
        raise ValueError(f"the record is a JSON {type(record).__name__}, not an object")
    missing = [name for name in ("pixels", "label") if name not in record]
    if missing:
        raise ValueError(f"no {' or '.join(map(repr, missing))} field")
    pixels = np.frombuffer(base64.b64decode(record["pixels"], validate=True), np.uint8)
    if pixels.size != contract.SIDE * contract.SIDE:
        raise ValueError(f"{pixels.size} pixels, not {contract.SIDE}x{contract.SIDE}")
    if hashlib.sha256(pixels.tobytes()).hexdigest() != record_id:
        raise ValueError("its pixels do not hash to its id")
    if not _digit(record["label"]):
        raise ValueError(f"label {record['label']!r} is not a digit")
    if record.get("predicted") is not None and not _digit(record["predicted"]):
        raise ValueError(f"predicted {record['predicted']!r} is not a digit")
    if record.get("client_id") is not None and not isinstance(record["client_id"], str):
        raise ValueError(f"client_id {record['client_id']!r} is not a string")
    return record, pixels.reshape(contract.SIDE, contract.SIDE)


def writer(record, record_id):
    """Who wrote a record: its client id; a record without one is a writer of its own."""
    return record.get("client_id") or f"record:{record_id}"


def parse(raw, record_id):
    """(pixels uint8 [28, 28], label, writer) of one record's bytes; ValueError says what is wrong."""
    record, pixels = check(raw, record_id)
    return pixels, record["label"], writer(record, record_id)


def record_ids(store):
    """The ids of every record in ``store`` and the set of rejected ones."""
    ids = [k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list(contract.RECORDS) if k.endswith(".json")]
    rejected = {k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list(contract.REJECTED)}
    return ids, rejected


def _read_each(store, ids, how):
    """(id, ``how(its bytes, id)``) for each record of ``ids``, in order, READERS at a time;
    in place of the result, why it could not be read or used (a string)."""
    def read(record_id):
        try:
            return record_id, how(store.read(contract.record_key(record_id)), record_id)
        except (StoreError, ValueError, KeyError, TypeError) as e:
            return record_id, f"{type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        yield from pool.map(read, ids)


def load(uri, log=print):
    """Every accepted correction in the feedback store at ``uri``. Raises StoreError only
    when the store itself cannot be listed."""
    store = open_store(uri)
    ids, rejected = record_ids(store)
    skipped = {i: "rejected by an operator" for i in ids if i in rejected}
    wanted = [i for i in ids if i not in rejected]

    xs, ys, writers, kept = [], [], [], []
    for record_id, result in _read_each(store, wanted, parse):
        if isinstance(result, str):
            skipped[record_id] = result
            continue
        x, y, writer_id = result
        xs.append(x), ys.append(y), writers.append(writer_id), kept.append(record_id)
    unreadable = {i: why for i, why in skipped.items() if i not in rejected}
    log(f"feedback: {len(kept):,} corrections from {len(set(writers)):,} writers in {store.uri}; skipped "
        f"{len(skipped):,} ({len(skipped) - len(unreadable):,} rejected, {len(unreadable):,} unreadable)")
    for record_id, why in sorted(unreadable.items()):
        log(f"feedback: skipped {record_id}: {why}")
    x = np.stack(xs) if xs else np.zeros((0, contract.SIDE, contract.SIDE), np.uint8)
    return Corrections(x, np.asarray(ys, np.uint8), writers, kept, skipped)


def held_out(writer, share=HOLDOUT_SHARE):
    """Whether ``writer``'s corrections belong to the real-drawings validation set: a fixed
    hash of the writer, so every run, and every retraining, splits them alike."""
    return int.from_bytes(hashlib.sha256(writer.encode()).digest()[:8], "big") < share * 2 ** 64


def split(corrections, share=HOLDOUT_SHARE):
    """(training corrections, real-drawings validation set), split by writer."""
    hold = [held_out(w, share) for w in corrections.writers]
    return corrections.subset([not h for h in hold]), corrections.subset(hold)


# The review CLI. Exit codes are the registry's where the meaning is the same; the others
# are numbers the registry does not use, so that a code means one thing in both CLIs.
EXIT_AMBIGUOUS = 8  # an id prefix is the start of more than one record's id

DEFAULT_STORE = contract.DEFAULT_FEEDBACK_URI
ID_PREFIX = 8       # the fewest hex digits that may name a record
SHORT_ID = 12       # hex digits of an id in list's table
LIST_LIMIT, SHEET_LIMIT = 20, 50
PROGRESS_EVERY = 1000  # records read between two progress lines on stderr
DAY = re.compile(r"\d{4}-\d\d-\d\d")
UNKNOWN_DAY = "unknown"  # stats' day of an unreadable record without a days/ marker
FIELD_ORDER = ("created_at", "label", "predicted", "model_version", "client_id", "image_sha256", "strokes")

# The contact sheet: tiles of SHEET_COLUMNS a row, newest first, each the digit (scaled up,
# white ink on black) over a two-line caption: "predicted -> label" and the id's first
# ID_PREFIX hex digits, enough to name it to show or reject.
SHEET_COLUMNS = 10
SHEET_PAD = 6       # px around every tile; a rejected tile's red frame lies in it
SHEET_CAPTION = 28  # px of caption under a tile's digit
SHEET_HEADER = 20   # px of title line above the tiles
SHEET_SCALE = 4
BACKGROUND, INK, REJECTED_RED = (48, 48, 48), (235, 235, 235), (235, 50, 50)
ASCII_RAMP = " .:-=+*#%@"  # show's digit: blank is no ink, @ full ink

DESCRIPTION = f"""Review the corrections people sent (POST /feedback) before training trusts them:
count them, list the newest, look at one or at a contact sheet of many, and reject junk.

The store is a directory, a PVC mount or gs://bucket/prefix (--store, else env FEEDBACK_URI,
else ./{DEFAULT_STORE}). A rejection is rejected/<id>.json, written once, with who rejected it
(env DIGITDRAW_ACTOR, else user@host), when and why; `python -m training --feedback` leaves
the record out, and the record stays, for audit. A record is named by its id (the sha256 of
its 28x28 pixels) or by the first {ID_PREFIX} or more of its hex digits."""

EPILOG = f"""exit codes:
  {EXIT_OK}  ok
  {EXIT_INVALID}  show: the record is unreadable (bad JSON, or pixels that do not hash to its id)
  {EXIT_USAGE}  usage: a bad command, flag, store URI or --out path
  {EXIT_NOT_FOUND}  no record has that id
  {EXIT_UNREACHABLE}  the store cannot be reached (network, credentials, missing bucket or mount)
  {EXIT_AMBIGUOUS}  the id prefix is the start of more than one record's id; give more of it"""


class ReviewError(RegistryError):
    """A review command cannot do what was asked; ``exit_code`` says which kind of failure."""


@dataclasses.dataclass
class Entry:
    """One record as the review sees it: the record (a dict) and its pixels when it is
    readable, else ``problem``, why not; ``day`` is the day it was sent (None: unknown)."""

    id: str
    day: str | None
    rejected: bool
    record: dict | None = None
    pixels: np.ndarray | None = None
    problem: str | None = None

    def get(self, name):
        """A field of the record; None if the record is unreadable or has no such field."""
        return (self.record or {}).get(name)

    def reading(self):
        """"predicted → label" ("-" for no prediction), or "-" for an unreadable record."""
        if self.problem:
            return "-"
        return f"{'-' if self.get('predicted') is None else self.get('predicted')} → {self.get('label')}"

    def status(self):
        return "rejected" if self.rejected else f"UNREADABLE: {self.problem}" if self.problem else "accepted"


def _index(store):
    """(every record id, the rejected ones, the first day each was sent by its days/ markers):
    listings only, no record is read. The same drawing sent again on a later day gets that
    day's marker too; the record is counted on its first."""
    ids, rejected = record_ids(store)
    known, first = set(ids), {}
    for key in store.list(contract.DAYS):
        parts = key.split("/")
        if len(parts) == 3 and DAY.fullmatch(parts[1]) and parts[2] in known:
            first[parts[2]] = min(first.get(parts[2], parts[1]), parts[1])
    return ids, rejected, first


def _entry(record_id, result, rejected, first):
    if isinstance(result, str):
        return Entry(record_id, first.get(record_id), record_id in rejected, problem=result)
    record, pixels = result
    created = record.get("created_at")
    day = first.get(record_id) or (created[:10] if isinstance(created, str) and DAY.match(created) else None)
    return Entry(record_id, day, record_id in rejected, {k: v for k, v in record.items() if k != "pixels"}, pixels)


def _newest_first(entry):
    created = entry.get("created_at")
    return created if isinstance(created, str) else "", entry.id


def entries(store, keep_day=None, log=None):
    """Every record of ``store`` as an Entry, newest first (by day, then created_at; the
    unreadable last in their day), of the days ``keep_day`` accepts: a predicate on
    "YYYY-MM-DD", or None for a day unknown. The records are read a day at a time, when
    the caller gets there, so one that stops early reads few. ``log`` gets a progress line
    every PROGRESS_EVERY records."""
    ids, rejected, first = _index(store)
    keep = keep_day or (lambda day: True)
    by_day = collections.defaultdict(list)
    for record_id in ids:
        if record_id in first:
            by_day[first[record_id]].append(record_id)
    unmarked = [i for i in ids if i not in first]  # the service stopped between record and marker
    total = len(unmarked) + sum(len(v) for day, v in by_day.items() if keep(day))
    done = 0

    def read(batch):
        nonlocal done
        for record_id, result in _read_each(store, batch, check):
            done += 1
            if log and total > PROGRESS_EVERY and done % PROGRESS_EVERY == 0:
                log(f"{store.uri}: read {done:,} of {total:,} records")
            yield _entry(record_id, result, rejected, first)

    found_late = collections.defaultdict(list)  # a record without a marker has its day in created_at
    for entry in read(unmarked):
        found_late[entry.day].append(entry)
    days = sorted({*by_day, *found_late} - {None}, reverse=True) + [None]
    for day in days:
        if keep(day):
            batch = found_late.get(day, []) + list(read(by_day.get(day, [])))
            yield from sorted(batch, key=_newest_first, reverse=True)


def _progress(line):
    print(line, file=sys.stderr, flush=True)


def _today():
    return datetime.datetime.now(datetime.timezone.utc).date()


def summary(found, uri, since=None):
    """The counts ``stats`` prints, of the entries ``found``: every record sent is counted by
    day, the readable ones by label and by reading, rejected ones included."""
    readable = [e for e in found if not e.problem]
    pairs = collections.Counter((e.get("predicted"), e.get("label")) for e in readable
                                if e.get("predicted") is not None and e.get("predicted") != e.get("label"))
    labels = collections.Counter(e.get("label") for e in readable)
    unreadable = {e.id: e.problem for e in found if e.problem and not e.rejected}
    rejected = sum(e.rejected for e in found)
    return {"store": uri, "since": since, "records": len(found), "accepted": len(found) - rejected - len(unreadable),
            "rejected": rejected, "unreadable": len(unreadable),
            "writers": len({writer(e.record, e.id) for e in readable}),
            "by_day": dict(sorted(collections.Counter(e.day or UNKNOWN_DAY for e in found).items())),
            "by_label": {str(d): labels[d] for d in range(contract.CLASSES)},
            "confusions": [{"predicted": p, "label": y, "count": n}
                           for (p, y), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))],
            "confirmations": sum(e.get("predicted") == e.get("label") for e in readable),
            "without_prediction": sum(e.get("predicted") is None for e in readable),
            "unreadable_ids": dict(sorted(unreadable.items()))}


def cmd_stats(store, args):
    since = (_today() - datetime.timedelta(days=args.days - 1)).isoformat() if args.days else None
    keep = (lambda day: day is not None and day >= since) if since else None
    s = summary(list(entries(store, keep, _progress)), store.uri, since)
    if args.json:
        print(json.dumps(s, indent=2))
        return EXIT_OK
    window = f" since {since} (the last {args.days} days, UTC)" if since else ""
    print(f"{store.uri}: {_records(s['records'])}{window} from {s['writers']:,} writers: {s['accepted']:,} accepted, "
          f"{s['rejected']:,} rejected, {s['unreadable']:,} unreadable")
    if not s["records"]:
        return EXIT_OK
    print("\nby day:\n" + _table([["DAY", "RECORDS"], *s["by_day"].items()]))
    print("\nby label:\n" + _table([["LABEL", *s["by_label"]], ["RECORDS", *s["by_label"].values()]]))
    print("\nmisread (predicted → label), most common first:")
    print(_table([["READING", "RECORDS"], *[[f"{c['predicted']} → {c['label']}", c["count"]]
                                            for c in s["confusions"]]]) if s["confusions"] else "none")
    print(f"\nconfirmations (predicted = label): {s['confirmations']:,}; "
          f"without a prediction: {s['without_prediction']:,}")
    if s["unreadable_ids"]:
        print("\nunreadable (training skips them; `show ID` says more):")
        print(_table([[i[:SHORT_ID], why] for i, why in s["unreadable_ids"].items()]))
    return EXIT_OK


def _selected(store, args, limit, readable_only=False):
    """(the newest entries that --day and --label let through, at most ``limit``; whether there
    are more; the ids of the unreadable ones passed over, when ``readable_only``)."""
    keep_day = (lambda day: day == args.day) if args.day else None
    chosen, passed_over = [], []
    for entry in entries(store, keep_day, _progress):
        if entry.problem and readable_only:
            passed_over.append(entry.id)
            continue
        if args.label is None or entry.get("label") == args.label:
            if len(chosen) == limit:
                return chosen, True, passed_over
            chosen.append(entry)
    return chosen, False, passed_over


def _filters(args):
    """" (day D, label L)" for the filters given, "" for none."""
    said = [f"day {args.day}" if args.day else "", f"label {args.label}" if args.label is not None else ""]
    said = ", ".join(s for s in said if s)
    return f" ({said})" if said else ""


def _records(n):
    return f"{n:,} record{'' if n == 1 else 's'}"


def cmd_list(store, args):
    chosen, more, _ = _selected(store, args, args.limit)
    if args.json:
        print(json.dumps([{"id": e.id, "day": e.day, "created_at": e.get("created_at"), "predicted": e.get("predicted"),
                           "label": e.get("label"), "model_version": e.get("model_version"),
                           "client_id": e.get("client_id"), "rejected": e.rejected, "unreadable": e.problem}
                          for e in chosen], indent=2))
        return EXIT_OK
    if not chosen:
        print(f"{store.uri}: no records{_filters(args)}")
        return EXIT_OK
    print(_table([["ID", "CREATED", "READING", "MODEL", "CLIENT", "STATUS"]]
                 + [[e.id[:SHORT_ID], e.get("created_at") or "-", e.reading(), e.get("model_version") or "-",
                     e.get("client_id") or "-", e.status()] for e in chosen]))
    if more:
        print(f"(the newest {args.limit}; --limit N shows more)")
    return EXIT_OK


def _resolve(store, text):
    """The id of the one record ``text`` (an id, or the start of one) names; ReviewError if none or several."""
    if len(text) == 64:
        matches = [text] if store.exists(contract.record_key(text)) else []
    else:
        matches = [i for i in record_ids(store)[0] if i.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ReviewError(f"no record {text} in {store.uri}; `python -m training.feedback --store {store.uri} list` "
                          "shows the records", EXIT_NOT_FOUND)
    raise ReviewError(f"{text} is the start of {len(matches)} record ids in {store.uri} "
                      f"({', '.join(m[:16] + '...' for m in sorted(matches)[:5])}); give more of the id",
                      EXIT_AMBIGUOUS)


def _rejection(store, record_id):
    """How ``record_id`` was rejected, as "by WHO at WHEN: REASON"; None if it is not rejected."""
    key = contract.rejected_key(record_id)
    try:
        rejection = json.loads(store.read(key))
        if not isinstance(rejection, dict):
            raise ValueError(f"a JSON {type(rejection).__name__}, not an object")
    except StoreNotFound:
        return None
    except ValueError as e:
        return f"by an unreadable {key} ({e})"
    return f"by {rejection.get('by') or '?'} at {rejection.get('at') or '?'}: {rejection.get('reason') or '-'}"


def ascii_art(pixels):
    """The digit as framed text, two characters a pixel (a terminal cell is about twice as
    tall as it is wide); any ink at all shows, from '.' up to '@' for full ink."""
    steps = len(ASCII_RAMP) - 1
    rows = ["".join(ASCII_RAMP[0 if v == 0 else 1 + (int(v) - 1) * steps // contract.PIXEL_MAX] * 2 for v in row)
            for row in pixels]
    edge = "+" + "-" * (2 * contract.SIDE) + "+"
    return "\n".join([edge, *(f"|{row}|" for row in rows), edge])


def _shown(name, value):
    if name == "strokes" and isinstance(value, list):
        return f"{len(value)} strokes, {sum(len(s) for s in value if isinstance(s, list))} points"
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)[:200]


def cmd_show(store, args):
    record_id = _resolve(store, args.id)
    raw = store.read(contract.record_key(record_id))
    rejection = _rejection(store, record_id)
    try:
        record, pixels = check(raw, record_id)
        problem = None
    except (ValueError, KeyError, TypeError) as e:
        record, pixels, problem = _loose_json(raw), None, f"{type(e).__name__}: {e}"
    entry = Entry(record_id, None, rejection is not None, record, pixels, problem)
    rows = [("id", record_id), ("status", "rejected" if rejection else "UNREADABLE" if problem else "accepted")]
    rows += [("rejected", rejection)] if rejection else []
    rows += [("unreadable", f"{problem}; training skips it")] if problem else []
    rows += [("reading", entry.reading())] if not problem else []
    names = [n for n in FIELD_ORDER if n in record] + sorted(set(record) - {*FIELD_ORDER, "id", "pixels"})
    rows += [(name, _shown(name, record[name])) for name in names]
    print(_table(rows))
    if pixels is not None:
        print(ascii_art(pixels))
    return EXIT_INVALID if problem else EXIT_OK


def _loose_json(raw):
    """What of an unreadable record's fields can be shown: its JSON object, or nothing."""
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def cmd_reject(store, args):
    record_id = _resolve(store, args.id)
    rejection = {"id": record_id, "reason": args.reason, "by": actor(), "at": _now()}
    try:
        store.create(contract.rejected_key(record_id), _dump(rejection))
    except AlreadyExists:
        print(f"{store.uri}: {record_id} is already rejected ({_rejection(store, record_id)}); nothing written")
        return EXIT_OK
    print(f"{store.uri}: rejected {record_id} (by {rejection['by']}: {args.reason}); training leaves it out, "
          "the record stays for audit")
    return EXIT_OK


def sheet_size(tiles, scale, min_width=0):
    """(width, height) in px of a contact sheet of ``tiles`` tiles at ``scale``."""
    side = contract.SIDE * scale
    columns, rows = min(tiles, SHEET_COLUMNS), math.ceil(tiles / SHEET_COLUMNS)
    return (max(SHEET_PAD + columns * (side + SHEET_PAD), min_width),
            SHEET_HEADER + rows * (side + SHEET_CAPTION + SHEET_PAD))


def tile_origin(index, scale):
    """(x, y) in px of the top left pixel of tile ``index``'s digit on a contact sheet."""
    side = contract.SIDE * scale
    row, column = divmod(index, SHEET_COLUMNS)
    return SHEET_PAD + column * (side + SHEET_PAD), SHEET_HEADER + row * (side + SHEET_CAPTION + SHEET_PAD)


def _caption(draw, x, y, entry, colour, font):
    """"predicted → label" with the arrow drawn (Pillow's built-in font has no →), a cross
    after it when rejected, and the id's first ID_PREFIX hex digits below."""
    predicted = "-" if entry.get("predicted") is None else str(entry.get("predicted"))
    draw.text((x, y), predicted, fill=colour, font=font)
    left, mid = x + draw.textlength(predicted, font=font) + 3, y + 6
    draw.line([(left, mid), (left + 10, mid)], fill=colour)
    draw.line([(left + 7, mid - 3), (left + 10, mid), (left + 7, mid + 3)], fill=colour)
    label = str(entry.get("label"))
    draw.text((left + 14, y), label, fill=colour, font=font)
    if entry.rejected:
        cross = left + 20 + draw.textlength(label, font=font)
        draw.line([(cross, mid - 4), (cross + 8, mid + 4)], fill=colour, width=2)
        draw.line([(cross, mid + 4), (cross + 8, mid - 4)], fill=colour, width=2)
    draw.text((x, y + 13), entry.id[:ID_PREFIX], fill=colour, font=font)


def contact_sheet(chosen, scale):
    """A Pillow RGB image: one tile per entry of ``chosen`` (readable ones), in order, rows of
    SHEET_COLUMNS; each digit's pixels as they are (white ink on black) scaled up by
    ``scale`` with nearest neighbour, a rejected one framed and captioned in red."""
    from PIL import Image, ImageDraw, ImageFont  # only the sheet needs Pillow

    font = ImageFont.load_default()
    title = f"{_records(len(chosen))}, newest first; red: rejected"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sheet = Image.new("RGB", sheet_size(len(chosen), scale, 2 * SHEET_PAD + math.ceil(measure.textlength(title, font))),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((SHEET_PAD, 4), title, fill=INK, font=font)
    side = contract.SIDE * scale
    for index, entry in enumerate(chosen):
        x, y = tile_origin(index, scale)
        sheet.paste(Image.fromarray(entry.pixels).resize((side, side), Image.Resampling.NEAREST), (x, y))
        colour = REJECTED_RED if entry.rejected else INK
        if entry.rejected:
            draw.rectangle([x - 3, y - 3, x + side + 2, y + side + 2], outline=REJECTED_RED, width=2)
        _caption(draw, x, y + side + 3, entry, colour, font)
    return sheet


def _save_png(image, path):
    """Write ``image`` to ``path`` whole or not at all: a temporary file beside it, renamed."""
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".sheet-", suffix=".png")
    except OSError as e:
        raise ReviewError(f"cannot write --out {path}: {e.strerror}; give a file in a writable directory",
                          EXIT_USAGE) from None
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise ReviewError(f"cannot write --out {path}: {e.strerror}; give a file in a writable directory",
                          EXIT_USAGE) from None


def cmd_sheet(store, args):
    chosen, more, unreadable = _selected(store, args, args.limit, readable_only=True)
    left_out = (f"; {len(unreadable)} unreadable left out ({', '.join(i[:SHORT_ID] for i in unreadable[:5])}"
                f"{', ...' if len(unreadable) > 5 else ''}; show ID says why)") if unreadable else ""
    if not chosen:
        print(f"{store.uri}: no readable records{_filters(args)}; nothing written{left_out}")
        return EXIT_OK
    _save_png(contact_sheet(chosen, args.scale), args.out)
    rejected = sum(e.rejected for e in chosen)
    print(f"{args.out}: {_records(len(chosen))} of {store.uri}{_filters(args)}, newest first, "
          f"{SHEET_COLUMNS} a row, {rejected} rejected (framed in red)"
          + (f"; the newest {args.limit}, --limit N draws more" if more else "") + left_out)
    return EXIT_OK


def _whole(low):
    def whole(text):
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {low}")
        return n

    return whole


def _day(text):
    try:
        if DAY.fullmatch(text):
            return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not a day YYYY-MM-DD (UTC), e.g. {_today().isoformat()}")


def _record_id(text):
    text = text.strip().lower()
    if not re.fullmatch(f"[0-9a-f]{{{ID_PREFIX},64}}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a record id: give its 64 hex digits or at least the first "
                                         f"{ID_PREFIX} (list shows them)")
    return text


def _reason(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("say why, e.g. --reason \"scribble, not a digit\"")
    return text.strip()


def parser():
    top, command = store_cli("python -m training.feedback", "feedback store", "FEEDBACK_URI", DEFAULT_STORE,
                             DESCRIPTION, EPILOG)

    def filters(sub, limit):
        sub.add_argument("--day", type=_day, help="only the records sent on this day, YYYY-MM-DD (UTC)")
        sub.add_argument("--label", type=int, choices=range(contract.CLASSES), metavar="D",
                         help="only the records labelled with digit D")
        sub.add_argument("--limit", type=_whole(1), default=limit, metavar="N", help=f"at most N (default {limit})")

    sub = command("stats", cmd_stats, "counts by day (the days/ markers), by label and by reading (predicted → "
                  "label, the misread most common first; confirmations apart), and how many are rejected, "
                  "unreadable, and how many writers (client ids) sent them")
    sub.add_argument("--days", type=_whole(1), metavar="N", help="only the last N days, today (UTC) included")
    sub.add_argument("--json", action="store_true", help="the counts as a JSON object")
    sub = command("list", cmd_list, f"the newest records first: id (its first {SHORT_ID} hex digits), created, "
                  "predicted → label, model version, client id, and whether it is rejected or unreadable")
    filters(sub, LIST_LIMIT)
    sub.add_argument("--json", action="store_true", help="the same rows as a JSON list, with the full ids")
    sub = command("show", cmd_show, "one record without its pixels, its digit drawn as text, and whether it is "
                  f"rejected (by whom, when, why); exit {EXIT_INVALID} if it is unreadable")
    sub.add_argument("id", type=_record_id, metavar="ID", help=f"a record id, or its first {ID_PREFIX}+ hex digits")
    sub = command("reject", cmd_reject, "leave a record out of training: writes rejected/<id>.json (who, when, why) "
                  "once; the record stays, for audit. Rejecting it again changes nothing")
    sub.add_argument("id", type=_record_id, metavar="ID", help=f"a record id, or its first {ID_PREFIX}+ hex digits")
    sub.add_argument("--reason", type=_reason, required=True, help="why, for whoever looks later (required)")
    sub = command("sheet", cmd_sheet, "a contact sheet PNG of the newest readable records: each digit white on "
                  f"black, captioned predicted → label and its id's first {ID_PREFIX} hex digits; rejected ones "
                  "framed in red")
    sub.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write (replaced whole)")
    filters(sub, SHEET_LIMIT)
    sub.add_argument("--scale", type=_whole(2), default=SHEET_SCALE, metavar="S",
                     help=f"each 28x28 pixel becomes SxS (default {SHEET_SCALE}, at least 2)")
    return top


def _check_mounted(store):
    # Listing a directory that does not exist finds nothing, which would pass for an empty store.
    if isinstance(store, LocalStore) and not os.path.isdir(store.root):
        raise StoreUnreachable(f"store directory {store.root} does not exist (is the volume mounted? the service "
                               "creates it with the first correction)")


def main(argv=None):
    """Run the review CLI; returns the exit code (EXIT_*)."""
    return run_cli(parser().parse_args(argv), check=_check_mounted)


if __name__ == "__main__":
    sys.exit(main())
