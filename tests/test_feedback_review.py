"""The feedback review CLI, ``python -m training.feedback``, run as a real subprocess.

Every test runs against a local directory and against gs:// on a real fake-gcs-server
(the store_uri fixture of tests/conftest.py). Most records are built exactly as
service/feedback.py builds them (the same fields, the id the sha256 of the 784 pixel bytes,
the same JSON, a days/ marker) from real MNIST digits of the bundled sample, and created
through the store client; one test has a real `python -m service` store them from POST /feedback.
"""
import base64
import datetime
import functools
import hashlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from publish_helpers import ROOT, gate, meta_for, tiny_onnx
from service import contract
from service.store import open_store
from service_helpers import ServiceProcess, data_url, draw_digit, png_bytes
from test_registry import one_error_line
from training import cli as toolkit
from training.data import SAMPLE_DIR, TRAIN_IMAGES, TRAIN_LABELS, read_pair
from training.feedback import decisions, loader
from training.feedback import sheet as drawing
from training.publish import publish

pytestmark = pytest.mark.slow  # runs the review CLI as processes


ACTOR = "review-test"
MODEL = "20261201T000000Z-0123abcd"

# The CLI with a progress line every 2 records read instead of every PROGRESS_EVERY: argv is the CLI's.
PROGRESS_EVERY_2_CLI = """
import sys
from training.feedback import cli


cli.PROGRESS_EVERY = 2
sys.exit(cli.main(sys.argv[1:]))
"""


@functools.cache
def mnist():
    return read_pair(SAMPLE_DIR, TRAIN_IMAGES, TRAIN_LABELS)


def digit(i):
    """The i-th digit of the bundled sample: (uint8 [28, 28], its label)."""
    x, y = mnist()
    return x[i], int(y[i])


def days_ago(n, hour=12, second=0):
    return datetime.datetime.now(datetime.timezone.utc).replace(hour=hour, minute=0, second=second,
                                                                microsecond=0) - datetime.timedelta(days=n)


def make_record(pixels, label, predicted=None, client_id=None, at=None, model_version=MODEL, strokes=None,
                network=None):
    """A record exactly as POST /feedback stores it (service/feedback.py), with the coarse
    network key when given."""
    at = at or days_ago(0)
    pixels = np.ascontiguousarray(pixels, np.uint8)
    fields = {"label": label, "predicted": predicted, "model_version": model_version, "client_id": client_id}
    if strokes is not None:
        fields["strokes"] = strokes
    if network is not None:
        fields["network"] = network
    return {"id": hashlib.sha256(pixels.tobytes()).hexdigest(), "pixels": base64.b64encode(pixels.tobytes()).decode(),
            **fields, "created_at": f"{at:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z",
            "image_sha256": hashlib.sha256(png_bytes(Image.fromarray(pixels))).hexdigest()}


def put(uri, record, days=None, raw=None):
    """Create ``record`` in the store as the service does: the record, then its day's marker
    (``days``: the markers to write; none for [], the record's own day by default).
    ``raw`` stores those bytes under the record's key instead of its JSON."""
    store = open_store(uri)
    store.create(contract.record_key(record["id"]), raw or (json.dumps(record, sort_keys=True) + "\n").encode())
    for day in days if days is not None else [record["created_at"][:10]]:
        store.create(contract.day_key(day, record["id"]), b"")
    return record


def cli(uri, *args, env=None):
    """Run the review CLI on ``uri``; the CompletedProcess, output as text."""
    store = ["--store", uri] if uri is not None else []
    return subprocess.run([sys.executable, "-m", "training.feedback", *store, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "DIGITDRAW_ACTOR": ACTOR, **(env or {})})


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def as_json(result):
    return json.loads(ok(result))


def rows(text):
    """A table's rows as lists of cells (columns are two or more spaces apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


@functools.cache
def prefix_twins():
    """Two digits whose ids share their first 8 hex digits: the same drawing with four
    corner pixels set to a counter, searched until two hash alike that far."""
    base = bytearray(digit(0)[0].tobytes())

    def variant(n):
        base[:4] = n.to_bytes(4, "big")
        return base

    seen = {}  # the first 4 bytes of a sha256 -> the counter that gave it
    for n in range(2 ** 32):
        head = hashlib.sha256(variant(n)).digest()[:4]
        if head in seen:
            return [np.frombuffer(bytes(variant(k)), np.uint8).reshape(28, 28) for k in (seen[head], n)]
        seen[head] = n
    raise AssertionError("no two ids alike in 8 hex digits")


def test_stats_counts_by_day_label_and_reading(store_uri):
    today, yesterday, older = (days_ago(n).date().isoformat() for n in (0, 1, 10))
    put(store_uri, make_record(digit(1)[0], 1, predicted=7, client_id="w1", at=days_ago(0, second=1)))
    put(store_uri, make_record(digit(2)[0], 1, predicted=7, client_id="w2", at=days_ago(0, second=2)))
    put(store_uri, make_record(digit(3)[0], 3, predicted=3, client_id="w1", at=days_ago(0, second=3)))
    # Sent yesterday and again today: one record, counted on its first day.
    put(store_uri, make_record(digit(4)[0], 7, predicted=1, client_id="w3", at=days_ago(1)), days=[yesterday, today])
    put(store_uri, make_record(digit(5)[0], 2, at=days_ago(1, second=5)))  # no prediction, no client id
    put(store_uri, make_record(digit(6)[0], 1, predicted=7, client_id="w1", at=days_ago(10)))
    # No marker (the service stopped between its two writes): its day comes from created_at.
    put(store_uri, make_record(digit(7)[0], 5, predicted=6, client_id="w4", at=days_ago(10, second=7)), days=[])

    everything = as_json(cli(store_uri, "stats", "--json"))
    suspects = everything.pop("suspicious_clients")
    assert everything == {
        "store": open_store(store_uri).uri, "since": None, "records": 7, "pending": 7, "approved": 0, "rejected": 0,
        "unreadable": 0, "writers": 5, "by_day": {older: 2, yesterday: 2, today: 3},
        "by_label": {"0": 0, "1": 3, "2": 1, "3": 1, "4": 0, "5": 1, "6": 0, "7": 1, "8": 0, "9": 0},
        "confusions": [{"predicted": 7, "label": 1, "count": 3}, {"predicted": 1, "label": 7, "count": 1},
                       {"predicted": 6, "label": 5, "count": 1}],
        "confirmations": 1, "without_prediction": 1, "unreadable_ids": {}, "suspicious_networks": []}
    # A few corrections each: nobody is suspicious, and the clients come in order of their ids.
    assert [(c["key"], c["records"], c["pending"], c["score"]) for c in suspects] == [
        ("w1", 3, 3, 0.0), ("w2", 1, 1, 0.0), ("w3", 1, 1, 0.0), ("w4", 1, 1, 0.0)]

    recent = as_json(cli(store_uri, "stats", "--days", "2", "--json"))
    assert recent["since"] == yesterday and recent["records"] == 5 and recent["writers"] == 4
    assert recent["by_day"] == {yesterday: 2, today: 3}
    assert recent["confusions"] == [{"predicted": 7, "label": 1, "count": 2}, {"predicted": 1, "label": 7, "count": 1}]

    text = ok(cli(store_uri, "stats"))
    assert text.splitlines()[0] == (f"{open_store(store_uri).uri}: 7 records from 5 writers: 7 pending, 0 approved, "
                                    "0 rejected; 0 unreadable")
    sections = text.split("\n\n")
    assert rows(sections[1])[1:3] == [["CLIENT", "SCORE", "RECORDS", "PENDING", "WHY"],
                                      ["w1", "0.0", "3", "3", "3 records from this client"]]
    assert rows(sections[2]) == [["by day:"], ["DAY", "RECORDS"], [older, "2"], [yesterday, "2"], [today, "3"]]
    assert rows(sections[3])[1:] == [["LABEL"] + list("0123456789"), ["RECORDS"] + list("0311010100")]
    assert rows(sections[4])[1:] == [["READING", "RECORDS"], ["7 → 1", "3"], ["1 → 7", "1"], ["6 → 5", "1"]]
    assert sections[5].strip() == "confirmations (predicted = label): 1; without a prediction: 1"

    progress = subprocess.run([sys.executable, "-c", PROGRESS_EVERY_2_CLI, "--store", store_uri, "stats"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert progress.returncode == 0 and progress.stdout == text, progress.stderr
    assert progress.stderr.splitlines() == [f"{open_store(store_uri).uri}: read {n} of 7 records" for n in (2, 4, 6)]


def test_list_shows_the_newest_first_with_filters(store_uri):
    old = put(store_uri, make_record(*digit(10), predicted=None, client_id=None, at=days_ago(3)))
    mid = put(store_uri, make_record(digit(11)[0], 4, predicted=9, client_id="pen-1", at=days_ago(1, hour=9)))
    new = put(store_uri, make_record(digit(12)[0], 4, predicted=4, client_id="pen-2", at=days_ago(1, hour=18)))
    newest = put(store_uri, make_record(digit(13)[0], 8, predicted=3, client_id="pen-1", at=days_ago(0)))

    listed = as_json(cli(store_uri, "list", "--json"))
    assert [r["id"] for r in listed] == [r["id"] for r in (newest, new, mid, old)]
    assert listed[1] == {"id": new["id"], "day": new["created_at"][:10], "created_at": new["created_at"],
                         "predicted": 4, "label": 4, "model_version": MODEL, "client_id": "pen-2", "network": None,
                         "state": "pending", "unreadable": None}

    table = rows(ok(cli(store_uri, "list")))
    assert table[0] == ["ID", "CREATED", "READING", "MODEL", "CLIENT", "STATE"]
    assert table[1] == [newest["id"][:12], newest["created_at"], "3 → 8", MODEL, "pen-1", "pending"]
    assert table[4] == [old["id"][:12], old["created_at"], f"- → {old['label']}", MODEL, "-", "pending"]

    yesterday = mid["created_at"][:10]
    assert [r["id"] for r in as_json(cli(store_uri, "list", "--day", yesterday, "--json"))] == [new["id"], mid["id"]]
    assert [r["id"] for r in as_json(cli(store_uri, "list", "--label", "4", "--limit", "1", "--json"))] == [new["id"]]
    assert [r["id"] for r in as_json(cli(store_uri, "list", "--reading", "9", "--json"))] == [mid["id"]]
    assert [r["id"] for r in as_json(cli(store_uri, "list", "--client", "pen-1", "--json"))] == [newest["id"], mid["id"]]
    ok(cli(store_uri, "approve", mid["id"], "--reason", "a clear 4"))
    assert [r["id"] for r in as_json(cli(store_uri, "list", "--state", "approved", "--json"))] == [mid["id"]]
    assert [r["id"] for r in as_json(cli(store_uri, "list", "--state", "pending", "--client", "pen-1", "--json"))] == [
        newest["id"]]
    limited = ok(cli(store_uri, "list", "--limit", "2")).splitlines()
    assert len(limited) == 4 and limited[-1] == "(the newest 2; --limit N shows more)"
    assert ok(cli(store_uri, "list", "--day", "2001-01-01")).strip() == \
        f"{open_store(store_uri).uri}: no records (day 2001-01-01)"

    for bad in (["--day", "2026-02-30"], ["--label", "10"], ["--limit", "0"], ["--reading", "x"], ["--state", "ok"]):
        usage = cli(store_uri, "list", *bad)
        assert usage.returncode == toolkit.EXIT_USAGE, (bad, usage.stderr)
        assert usage.stderr.splitlines()[-1].startswith("error: argument"), usage.stderr


def test_show_by_prefix_and_an_ambiguous_prefix(store_uri):
    pixels, label = digit(20)
    strokes = [[[0.1, 0.2], [0.3, 0.4], [0.5, 0.5]], [[0.6, 0.1], [0.6, 0.9]]]
    record = put(store_uri, make_record(pixels, label, predicted=(label + 1) % 10, client_id="pen-9", strokes=strokes))

    out = ok(cli(store_uri, "show", record["id"][:8].upper()))
    assert record["pixels"] not in out
    lines = out.splitlines()
    fields = dict(line.split(None, 1) for line in lines[:10])
    assert fields == {"id": record["id"], "state": "pending", "reading": f"{(label + 1) % 10} → {label}",
                      "created_at": record["created_at"], "label": str(label), "predicted": str((label + 1) % 10),
                      "model_version": MODEL, "client_id": "pen-9", "image_sha256": record["image_sha256"],
                      "strokes": "2 strokes, 5 points"}
    art = lines[10:]
    assert len(art) == 30 and art[0] == art[-1] == "+" + "-" * 56 + "+"
    shades = []  # (pixel, its character's place on the ramp from blank to @)
    for r, line in enumerate(art[1:-1]):
        assert len(line) == 58 and line[0] == line[-1] == "|"
        for c, value in enumerate(pixels[r]):
            cell = line[1 + 2 * c: 3 + 2 * c]
            assert cell[0] == cell[1] and (cell == "  ") == (value == 0), (r, c, value, cell)
            assert value != 255 or cell == "@@", (r, c, value, cell)
            shades.append((int(value), drawing.ASCII_RAMP.index(cell[0])))
    places = [place for _, place in sorted(shades)]
    assert places == sorted(places)  # more ink, a denser character

    twins = [put(store_uri, make_record(p, 1, predicted=7)) for p in prefix_twins()]
    shared = twins[0]["id"][:8]
    assert twins[1]["id"].startswith(shared)
    ambiguous = cli(store_uri, "show", shared)
    assert ambiguous.returncode == toolkit.EXIT_AMBIGUOUS
    one_error_line(ambiguous, open_store(store_uri).uri, f"{shared} is the start of 2 record ids",
                   twins[0]["id"][:16], twins[1]["id"][:16], "give more of the id")
    assert ok(cli(store_uri, "show", twins[1]["id"])).splitlines()[0].split() == ["id", twins[1]["id"]]

    missing = cli(store_uri, "show", "0123456789abcdef")
    assert missing.returncode == toolkit.EXIT_NOT_FOUND
    one_error_line(missing, "no record 0123456789abcdef in", open_store(store_uri).uri, "list")
    for bad in ("1234567", "not-hex-at-all"):
        usage = cli(store_uri, "show", bad)
        assert usage.returncode == toolkit.EXIT_USAGE, usage.stderr
        assert "is not a record id" in usage.stderr.splitlines()[-1]


def trained_on(uri, trust="approved"):
    """The record ids a retraining would train on (no writer held out), and its log."""
    lines = []
    found = loader.load(open_store(uri), b"test secret", trust, log=lines.append, holdout_share=0)
    return sorted(found.train.ids), lines


def test_decisions_are_audited_reversible_and_decide_what_trains(store_uri):
    junk = put(store_uri, make_record(*digit(30), predicted=2, client_id="troll"))
    kept = [put(store_uri, make_record(*digit(i), predicted=0, client_id=f"pen-{i}")) for i in (31, 32)]
    store = open_store(store_uri)
    assert trained_on(store_uri) == ([], [
        f"feedback: {store.uri}: 3 records: 0 approved, 3 pending, 0 rejected; trusting the approved ones: 0",
        "feedback: read 0, newest first: training on 0 from 0 writers; 0 approved from 0 held-out writers for the "
        "evaluation set; skipped 0 (unreadable or not drawings)"])
    assert trained_on(store_uri, "all")[0] == sorted(r["id"] for r in [junk, *kept])  # the opt-in: all not rejected

    out = ok(cli(store_uri, "reject", junk["id"][:10], "--reason", "  scribble, not a digit "))
    assert out.splitlines() == [
        f"{store.uri}: 1 record chosen: 1 pending; 1 record will be rejected",
        f"rejected {junk['id']} (was pending)",
        f"{store.uri}: 1 record rejected by {ACTOR}: scribble, not a digit; training leaves them out, the records "
        "stay for audit"]
    (key,) = store.list(f"{contract.DECISIONS}/{junk['id']}")
    assert contract.parse_decision_key(key)[::2] == (junk["id"], "rejected")
    decision = json.loads(store.read(key))
    assert decision.keys() == {"id", "decision", "reason", "by", "at"}
    assert (decision["id"], decision["decision"], decision["reason"], decision["by"]) == (
        junk["id"], "rejected", "scribble, not a digit", ACTOR)
    assert datetime.datetime.fromisoformat(decision["at"]) > days_ago(0, hour=0)
    assert json.loads(store.read(contract.record_key(junk["id"]))) == junk  # kept, for audit

    ok(cli(store_uri, "approve", *(r["id"] for r in kept), "--reason", "clear zeros"))
    assert trained_on(store_uri)[0] == sorted(r["id"] for r in kept)
    assert trained_on(store_uri, "all")[0] == sorted(r["id"] for r in kept)  # a rejected record never trains

    stats = as_json(cli(store_uri, "stats", "--json"))
    assert (stats["records"], stats["pending"], stats["approved"], stats["rejected"]) == (3, 0, 2, 1)
    assert {r["id"]: r["state"] for r in as_json(cli(store_uri, "list", "--json"))} == \
        {junk["id"]: "rejected", kept[0]["id"]: "approved", kept[1]["id"]: "approved"}

    # Deciding again what is already so writes nothing; a later decision reverses an earlier one.
    again = ok(cli(store_uri, "reject", junk["id"], "--reason", "a second look"))
    assert again.splitlines() == [f"{store.uri}: 1 record chosen: 1 rejected; 0 records will be rejected",
                                  f"{store.uri}: nothing written"]
    assert store.list(f"{contract.DECISIONS}/{junk['id']}") == [key]
    ok(cli(store_uri, "approve", junk["id"], "--reason", "it is a 5 after all"))
    ok(cli(store_uri, "reject", kept[0]["id"], "--reason", "looked again: a 6"))
    assert trained_on(store_uri)[0] == sorted([junk["id"], kept[1]["id"]])
    shown = ok(cli(store_uri, "show", junk["id"])).splitlines()
    assert shown[1].split() == ["state", "approved"]
    assert [line.split(None, 1)[1] for line in shown[2:4]] == [
        f"rejected by {ACTOR} at {decision['at']}: scribble, not a digit",
        f"{decisions.history(store, junk['id'])[1]['decision']} by {ACTOR} at "
        f"{decisions.history(store, junk['id'])[1]['at']}: it is a 5 after all"]
    assert len(store.list(contract.DECISIONS)) == 5  # every decision stays

    unknown = "f" * 64
    missing = cli(store_uri, "reject", unknown, "--reason", "junk")
    assert missing.returncode == toolkit.EXIT_NOT_FOUND
    one_error_line(missing, f"no record {unknown} in {store.uri}")
    no_reason = cli(store_uri, "reject", kept[1]["id"], "--reason", " ")
    assert no_reason.returncode == toolkit.EXIT_USAGE and "say why" in no_reason.stderr
    nothing_named = cli(store_uri, "approve", "--reason", "all of it")
    assert nothing_named.returncode == toolkit.EXIT_USAGE
    one_error_line(nothing_named, "name the records to approve", "--client")
    assert len(store.list(contract.DECISIONS)) == 5


def test_bulk_decisions_by_client_network_and_filters(store_uri):
    today = days_ago(0).date().isoformat()
    flood = [put(store_uri, make_record(digit(100 + k)[0], 7, predicted=1, client_id="flood", network="v4:aa",
                                        at=days_ago(0, second=k))) for k in range(6)]
    neighbour = put(store_uri, make_record(digit(110)[0], 7, predicted=1, client_id="next-door", network="v4:aa"))
    honest = [put(store_uri, make_record(*digit(120 + k), predicted=(k + 1) % 10, client_id=f"pen-{k}",
                                         network=f"v4:{k:02x}", at=days_ago(1, second=k))) for k in range(4)]
    store = open_store(store_uri)
    states = lambda: decisions.states(store)  # noqa: E731

    # A dry run says what would change, and writes nothing.
    dry = ok(cli(store_uri, "reject", "--client", "flood", "--reason", "flooding 1 → 7", "--dry-run")).splitlines()
    assert dry[0] == f"{store.uri}: 6 records chosen (client flood): 6 pending; 6 records will be rejected"
    assert sorted(line.split()[3] for line in dry[1:7]) == sorted(r["id"] for r in flood)
    assert dry[-1] == f"{store.uri}: dry run: nothing written" and store.list(contract.DECISIONS) == []

    # The filters narrow: only the flood's records labelled 7 that the model read as 1, of today.
    ok(cli(store_uri, "approve", flood[0]["id"], "--reason", "looked fine at first"))
    out = ok(cli(store_uri, "reject", "--client", "flood", "--label", "7", "--reading", "1", "--day", today,
                 "--reason", "flooding 1 → 7")).splitlines()
    assert out[0] == (f"{store.uri}: 6 records chosen (day {today}, label 7, reading 1, client flood): 5 pending, "
                      "1 approved; 6 records will be rejected")
    assert {i for i, s in states().items() if s == "rejected"} == {r["id"] for r in flood}

    # A network takes every client in it; a bulk approve takes pending records only.
    out = ok(cli(store_uri, "reject", "--network", "v4:aa", "--reason", "the same /24")).splitlines()
    assert out[0] == f"{store.uri}: 7 records chosen (network v4:aa): 1 pending, 6 rejected; 1 record will be rejected"
    assert states()[neighbour["id"]] == "rejected"
    out = ok(cli(store_uri, "approve", "--day", days_ago(1).date().isoformat(), "--reason", "yesterday's, looked at"))
    assert out.splitlines()[0].endswith(": 4 pending; 4 records will be approved")
    assert {i for i, s in states().items() if s == "approved"} == {r["id"] for r in honest}
    assert ok(cli(store_uri, "approve", "--network", "v4:aa", "--reason", "x")).splitlines()[-1] == \
        f"{store.uri}: nothing written"  # its records are rejected, not pending: named ids or --state reverse them
    ok(cli(store_uri, "approve", "--network", "v4:aa", "--state", "rejected", "--client", "next-door",
           "--reason", "the neighbour is a person"))
    assert states()[neighbour["id"]] == "approved"

    listed = {r["id"]: r["state"] for r in as_json(cli(store_uri, "list", "--limit", "20", "--json"))}
    assert listed == states()
    stats = as_json(cli(store_uri, "stats", "--json"))
    assert (stats["pending"], stats["approved"], stats["rejected"]) == (0, 5, 6)
    assert [n["key"] for n in stats["suspicious_networks"]][0] == "v4:aa"


def test_triage_puts_the_flooding_client_first(store_uri):
    # Twelve writers correct a few digits each, over an afternoon; one client sends forty
    # 1s labelled 7, in two minutes.
    for w in range(12):
        for k in range(3):
            i = 200 + 3 * w + k
            put(store_uri, make_record(*digit(i), predicted=(int(digit(i)[1]) + k) % 10, client_id=f"pen-{w}",
                                       at=days_ago(0, hour=13) + datetime.timedelta(minutes=20 * w + 5 * k)))
    ones = [i for i in range(300, 3000) if digit(i)[1] == 1][:40]
    for n, i in enumerate(ones):
        put(store_uri, make_record(digit(i)[0], 7, predicted=1, client_id="poison",
                                   at=days_ago(0, hour=9) + datetime.timedelta(seconds=3 * n)))

    stats = as_json(cli(store_uri, "stats", "--json"))
    first = stats["suspicious_clients"][0]
    assert (first["key"], first["records"], first["pending"]) == ("poison", 40, 40)
    assert first["score"] >= 1.0 and "40 × 1 → 7" in first["reasons"] and "40 within 10 min" in first["reasons"]
    assert all(c["score"] < 1.0 for c in stats["suspicious_clients"][1:])
    text = ok(cli(store_uri, "stats")).split("\n\n")[1]
    assert text.splitlines()[0].startswith("most suspicious clients first")
    assert rows(text)[2][:4] == ["poison", f"{first['score']:.1f} !", "40", "40"]

    listed = as_json(cli(store_uri, "list", "--suspicious", "--limit", "40", "--json"))
    assert {r["client_id"] for r in listed} == {"poison"}
    assert "its client sent 40 × 1 → 7" in listed[0]["reasons"]
    table = rows(ok(cli(store_uri, "list", "--suspicious", "--limit", "1")))
    assert table[0][-2:] == ["SCORE", "WHY"] and table[1][4] == "poison"

    ok(cli(store_uri, "reject", "--client", "poison", "--reason", "40 × 1 → 7 in two minutes"))
    assert as_json(cli(store_uri, "stats", "--json"))["rejected"] == 40


def tile(sheet, index, scale):
    """The digit of tile ``index`` on a contact sheet, from the layout's constants."""
    side = 28 * scale
    row, column = divmod(index, drawing.SHEET_COLUMNS)
    x = drawing.SHEET_PAD + column * (side + drawing.SHEET_PAD)
    y = drawing.SHEET_HEADER + row * (side + drawing.SHEET_CAPTION + drawing.SHEET_PAD)
    return sheet[y:y + side, x:x + side], (x, y)


def test_sheet_draws_one_tile_per_record(store_uri, tmp_path):
    records = [put(store_uri, make_record(*digit(40 + i), predicted=(i * 3) % 10, client_id=f"pen-{i % 4}",
                                          at=days_ago(i // 6, second=i))) for i in range(12)]
    newest_first = sorted(records, key=lambda r: r["created_at"], reverse=True)
    rejected = newest_first[3]
    ok(cli(store_uri, "reject", rejected["id"], "--reason", "looks like a 7 drawn over a 1"))

    sheets = tmp_path / "sheets"
    sheets.mkdir()
    out = sheets / "sheet.png"
    approved = newest_first[5]
    ok(cli(store_uri, "approve", approved["id"], "--reason", "a clear digit"))
    said = ok(cli(store_uri, "sheet", "--out", str(out), "--scale", "3"))
    assert said.strip() == (f"{out}: 12 records of {open_store(store_uri).uri}, newest first, 10 a row, "
                            "1 rejected (framed in red), 10 pending (captioned in grey)")
    image = Image.open(out)
    side = 28 * 3
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == (drawing.SHEET_PAD + 10 * (side + drawing.SHEET_PAD),
                          drawing.SHEET_HEADER + 2 * (side + drawing.SHEET_CAPTION + drawing.SHEET_PAD))
    sheet = np.asarray(image)
    for index, record in enumerate(newest_first):
        pixels = np.frombuffer(base64.b64decode(record["pixels"]), np.uint8).reshape(28, 28)
        drawn, (x, y) = tile(sheet, index, 3)
        expected = np.kron(pixels, np.ones((3, 3), np.uint8))  # nearest neighbour, white ink on black
        assert all(np.array_equal(drawn[..., channel], expected) for channel in range(3)), index
        frame = tuple(sheet[y - 2, x - 2])
        assert frame == (drawing.REJECTED_RED if record is rejected else drawing.BACKGROUND), (index, frame)
    assert os.listdir(sheets) == ["sheet.png"]  # no temporary file left

    day = newest_first[0]["created_at"][:10]
    small = sheets / "small.png"
    said = ok(cli(store_uri, "sheet", "--out", str(small), "--day", day, "--limit", "2"))
    assert said.strip().endswith("; the newest 2, --limit N draws more")
    sheet = np.asarray(Image.open(small))
    assert sheet.shape[0] == drawing.SHEET_HEADER + 28 * 4 + drawing.SHEET_CAPTION + drawing.SHEET_PAD
    assert np.array_equal(tile(sheet, 1, 4)[0][..., 0], np.kron(
        np.frombuffer(base64.b64decode(newest_first[1]["pixels"]), np.uint8).reshape(28, 28), np.ones((4, 4))))


    nowhere = tmp_path / "no-such-dir" / "sheet.png"
    unwritable = cli(store_uri, "sheet", "--out", str(nowhere))
    assert unwritable.returncode == toolkit.EXIT_USAGE
    one_error_line(unwritable, f"cannot write --out {nowhere}", "No such file or directory")
    nothing = ok(cli(store_uri, "sheet", "--out", str(tmp_path / "none.png"), "--day", "2001-01-01"))
    assert "nothing written" in nothing and not (tmp_path / "none.png").exists()


def test_corrupt_records_are_reported_and_skipped(store_uri, tmp_path):
    good = put(store_uri, make_record(*digit(50), predicted=1, client_id="pen"))
    bad_json = make_record(*digit(51))
    put(store_uri, bad_json, raw=b'{"pixels": "trunc')
    # Valid JSON, but the pixels are another digit's: they do not hash to the record's id.
    swapped = {**make_record(*digit(52), predicted=4, client_id="pen"), "pixels": make_record(*digit(53))["pixels"]}
    put(store_uri, swapped)
    store = open_store(store_uri)

    listed = {r["id"]: r for r in as_json(cli(store_uri, "list", "--json"))}
    assert listed[good["id"]]["unreadable"] is None
    assert listed[bad_json["id"]]["unreadable"].startswith("JSONDecodeError: ")
    assert listed[swapped["id"]]["unreadable"] == "ValueError: its pixels do not hash to its id"
    table = {row[0]: row for row in rows(ok(cli(store_uri, "list")))}
    assert table[swapped["id"][:12]][-1] == "UNREADABLE: ValueError: its pixels do not hash to its id"

    stats = as_json(cli(store_uri, "stats", "--json"))
    assert (stats["records"], stats["pending"], stats["unreadable"]) == (3, 3, 2)
    assert stats["unreadable_ids"] == {i: listed[i]["unreadable"] for i in (bad_json["id"], swapped["id"])}
    assert stats["by_day"] == {good["created_at"][:10]: 3} and sum(stats["by_label"].values()) == 1

    shown = cli(store_uri, "show", swapped["id"][:12])
    assert shown.returncode == toolkit.EXIT_INVALID
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines())
    assert fields["state"] == "pending"
    assert fields["unreadable"] == "ValueError: its pixels do not hash to its id; training skips it"
    assert (fields["label"], fields["client_id"]) == (str(swapped["label"]), "pen")  # what can be shown is
    assert "+---" not in shown.stdout  # no digit drawn from pixels that are not the record's
    assert cli(store_uri, "show", bad_json["id"]).returncode == toolkit.EXIT_INVALID

    ok(cli(store_uri, "approve", good["id"], bad_json["id"], swapped["id"], "--reason", "approved unseen"))
    ids, lines = trained_on(store_uri)
    assert ids == [good["id"]]
    assert lines[1] == ("feedback: read 3, newest first: training on 1 from 1 writers; 0 approved from 0 held-out "
                        "writers for the evaluation set; skipped 2 (unreadable or not drawings)")
    assert sorted(lines[2:]) == sorted(f"feedback: skipped {i}: {listed[i]['unreadable']}"
                                       for i in (bad_json["id"], swapped["id"]))

    said = ok(cli(store_uri, "sheet", "--out", str(tmp_path / "sheet.png")))
    assert "1 record of" in said and "2 unreadable left out" in said and swapped["id"][:12] in said
    assert ok(cli(store_uri, "reject", bad_json["id"], "--reason", "corrupt")).splitlines()[-1].startswith(
        f"{store.uri}: 1 record rejected")


def test_unreachable_store_exits_4_naming_it(fake_gcs, tmp_path):
    uri = "gs://no-such-bucket-digitdraw/feedback"
    out = str(tmp_path / "sheet.png")
    commands = (["stats"], ["list"], ["show", "0123456789ab"], ["reject", "0123456789ab", "--reason", "r"],
                ["approve", "--client", "c", "--reason", "r"],
                ["sheet", "--out", out])
    missing_dir = str(tmp_path / "not-mounted")
    for store, why in ((uri, "gs://no-such-bucket-digitdraw does not exist"), (missing_dir, "is the volume mounted?")):
        for args in commands:
            result = cli(store, *args)
            assert result.returncode == toolkit.EXIT_UNREACHABLE, (store, args, result.stderr)
            one_error_line(result, store, why, "--store or env FEEDBACK_URI")
    assert not os.path.exists(missing_dir) and not os.path.exists(out)


def test_store_defaults_to_feedback_uri_and_may_follow_the_command(store_uri, tmp_path):
    record = put(store_uri, make_record(*digit(60)))
    assert [r["id"] for r in as_json(cli(None, "list", "--json", env={"FEEDBACK_URI": store_uri}))] == [record["id"]]
    after = cli(None, "list", "--store", str(tmp_path / "empty"), env={"FEEDBACK_URI": store_uri})
    assert after.returncode == toolkit.EXIT_UNREACHABLE and str(tmp_path / "empty") in after.stderr
    usage = cli("s3://bucket/feedback", "stats")
    assert usage.returncode == toolkit.EXIT_USAGE
    one_error_line(usage, "s3://bucket/feedback", "gs://bucket/prefix", "--store or env FEEDBACK_URI")


@pytest.mark.slow  # a real `python -m service`
def test_records_the_service_stored(store_uri, tmp_path):
    models = str(tmp_path / "models")
    version = publish(tiny_onnx("review"), meta_for(0.99), [models], gate(), log=lambda line: None)["version"]
    with ServiceProcess(str(tmp_path), MODEL_URI=models, FEEDBACK_URI=store_uri) as server:
        server.wait_ready()
        sent = []
        for drawn, label, predicted, client in ((7, 1, 7, "pen-a"), (0, 0, 0, "pen-b")):
            r = requests.post(server.url + "/feedback", timeout=30, json={
                "image": data_url(png_bytes(draw_digit(drawn))), "label": label, "predicted": predicted,
                "model_version": version, "client_id": client})
            assert r.status_code == 201, r.text
            sent.append(r.json()["id"])

    listed = as_json(cli(store_uri, "list", "--json"))
    assert [r["id"] for r in listed] == sent[::-1]
    today = days_ago(0).date().isoformat()
    assert [(r["predicted"], r["label"], r["model_version"], r["client_id"], r["day"]) for r in listed] == [
        (0, 0, version, "pen-b", today), (7, 1, version, "pen-a", today)]
    stats = as_json(cli(store_uri, "stats", "--json"))
    assert stats["confusions"] == [{"predicted": 7, "label": 1, "count": 1}] and stats["confirmations"] == 1

    art = ok(cli(store_uri, "show", sent[0][:8])).splitlines()[-29:-1]
    ink = [any(ch != " " for ch in line[1:-1]) for line in art]
    assert sum(ink) > 10  # the drawn 7 is there, as the model saw it

    sheet = tmp_path / "sheet.png"
    ok(cli(store_uri, "sheet", "--out", str(sheet)))
    record = json.loads(open_store(store_uri).read(contract.record_key(sent[1])))
    pixels = np.frombuffer(base64.b64decode(record["pixels"]), np.uint8).reshape(28, 28)
    assert np.array_equal(tile(np.asarray(Image.open(io.BytesIO(sheet.read_bytes()))), 0, 4)[0][..., 1],
                          np.kron(pixels, np.ones((4, 4), np.uint8)))
    ok(cli(store_uri, "approve", "--client", "pen-a", "--reason", "a 1 it read as 7"))
    assert trained_on(store_uri)[0] == [sent[0]]

