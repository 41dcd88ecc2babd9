"""The review CLI, ``python -m training.feedback``: look at the corrections people sent, and decide.

Every command goes through the store client, so a directory, a PVC mount and
``gs://bucket/prefix`` behave alike. States, decisions and triage are
training/feedback/decisions.py's and triage.py's; this module only shows and asks.
"""
import argparse
import collections
import datetime
import json
import os
import re
import sys

from service import contract
from service.store import LocalStore, StoreUnreachable
from training.cli import (EXIT_AMBIGUOUS, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE,
                          CliError, actor, progress, reason, run_cli, store_cli, table, whole)
from training.feedback import decisions, records, sheet, triage
from training.feedback.decisions import APPROVED, PENDING, REJECTED, STATES

DEFAULT_STORE = contract.DEFAULT_FEEDBACK_URI
ID_PREFIX = sheet.ID_PREFIX  # the fewest hex digits that may name a record
SHORT_ID = 12                # hex digits of an id in list's table
LIST_LIMIT, SHEET_LIMIT, TOP = 20, 50, 10
SHOWN_IDS = 10               # ids a decision's dry run names
PROGRESS_EVERY = 1000        # records read between two progress lines on stderr
UNKNOWN_DAY = "unknown"      # stats' day of an unreadable record without a days/ marker
FIELD_ORDER = ("created_at", "label", "predicted", "model_version", "client_id", "network", "image_sha256", "strokes")

DESCRIPTION = f"""Review the corrections people sent (POST /feedback) before training trusts them:
count them, list them (newest or most suspicious first), look at one or at a contact sheet
of many, and approve or reject them, one by one or in bulk.

A correction is pending until a reviewer approves or rejects it; `python -m training`
trains on approved ones only (unless --feedback-trust all). A decision is one create-only
object, decisions/<id>/<time>-<approved|rejected>.json, with who decided (env
DIGITDRAW_ACTOR, else user@host), when and why; a later decision reverses an earlier one,
and nothing is deleted or rewritten. approve and reject say how many records they will
change before they change any; --dry-run stops there.

The store is a directory, a PVC mount or gs://bucket/prefix (--store, else env FEEDBACK_URI,
else ./{DEFAULT_STORE}). A record is named by its id (the sha256 of its 28x28 pixels) or by
the first {ID_PREFIX} or more of its hex digits."""

EPILOG = f"""exit codes:
  {EXIT_OK}  ok
  {EXIT_INVALID}  show: the record is unreadable (bad JSON, or pixels that do not hash to its id)
  {EXIT_USAGE}  usage: a bad command, flag, store URI or --out path, or nothing named to decide on
  {EXIT_NOT_FOUND}  no record has that id
  {EXIT_UNREACHABLE}  the store cannot be reached (network, credentials, missing bucket or mount)
  {EXIT_AMBIGUOUS}  the id prefix is the start of more than one record's id; give more of it"""


class ReviewError(CliError):
    """A review command cannot do what was asked; ``exit_code`` says which kind of failure."""


def _records(n):
    return f"{n:,} record{'' if n == 1 else 's'}"


def _today():
    return datetime.datetime.now(datetime.timezone.utc).date()


# ---- choosing records --------------------------------------------------------------------

def _filters(args):
    """" (day D, label L, ...)" for the filters given, "" for none."""
    said = [f"{name} {value}" for name, value in (
        ("day", getattr(args, "day", None)), ("label", getattr(args, "label", None)),
        ("reading", getattr(args, "reading", None)), ("client", getattr(args, "client", None)),
        ("network", getattr(args, "network", None)), ("state", getattr(args, "state", None))) if value is not None]
    return f" ({', '.join(said)})" if said else ""


def _reads_records(args):
    """Whether the filters need the records read (the state and the day need listings only)."""
    return any(getattr(args, name, None) is not None for name in ("label", "reading", "client", "network"))


def _matches(entry, args):
    """Whether a read Entry passes --label, --reading, --client and --network."""
    return ((args.label is None or entry.get("label") == args.label)
            and (args.reading is None or entry.get("predicted") == args.reading)
            and (args.client is None or entry.get("client_id") == args.client)
            and (args.network is None or entry.get("network") == args.network))


def _keep_day(args):
    return (lambda day: day == args.day) if getattr(args, "day", None) else None


def _selected(store, args, limit, states, found, readable_only=False):
    """(the newest entries the filters let through, at most ``limit`` (None: all); whether
    there are more; the ids of the unreadable ones passed over, when ``readable_only``)."""
    chosen, passed_over = [], []
    for entry in records.entries(store, found, _keep_day(args), progress, PROGRESS_EVERY):
        if getattr(args, "state", None) and states.get(entry.id) != args.state:
            continue
        if entry.problem and (readable_only or _reads_records(args)):
            if readable_only:
                passed_over.append(entry.id)
            continue
        if _matches(entry, args):
            if limit is not None and len(chosen) == limit:
                return chosen, True, passed_over
            chosen.append(entry)
    return chosen, False, passed_over


def _resolve(found, text, uri):
    """The id of the one record ``text`` (an id, or the start of one) names; ReviewError if none or several."""
    matches = [i for i in found.ids if i.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ReviewError(f"no record {text} in {uri}; `python -m training.feedback --store {uri} list` shows the "
                          "records", EXIT_NOT_FOUND)
    raise ReviewError(f"{text} is the start of {len(matches)} record ids in {uri} "
                      f"({', '.join(m[:16] + '...' for m in sorted(matches)[:5])}); give more of the id",
                      EXIT_AMBIGUOUS)


# ---- stats and list ----------------------------------------------------------------------

def summary(found, states, uri, since=None, top=TOP):
    """The counts ``stats`` prints, of the Entry list ``found`` with their ``states``: every
    record by state and by day, the readable ones by label and by reading, and triage's
    most suspicious clients and networks (``top`` of each)."""
    readable = [e for e in found if not e.problem]
    pairs = collections.Counter((e.get("predicted"), e.get("label")) for e in readable
                                if e.get("predicted") is not None and e.get("predicted") != e.get("label"))
    labels = collections.Counter(e.get("label") for e in readable)
    by_state = collections.Counter(states[e.id] for e in found)
    unreadable = {e.id: e.problem for e in found if e.problem}
    scored = triage.triage(e.as_triage() for e in readable)
    pending = collections.Counter()
    for e in readable:
        if states[e.id] == PENDING:
            pending[("client", e.get("client_id"))] += 1
            pending[("network", e.get("network"))] += 1

    def groups(kind, ranked):
        return [{**s.as_dict(), "pending": pending[(kind, s.key)]} for s in ranked[:top]]

    return {"store": uri, "since": since, "records": len(found), **{s: by_state[s] for s in STATES},
            "unreadable": len(unreadable), "writers": len({records.writer(e.record, e.id) for e in readable}),
            "by_day": dict(sorted(collections.Counter(e.day or UNKNOWN_DAY for e in found).items())),
            "by_label": {str(d): labels[d] for d in range(contract.CLASSES)},
            "confusions": [{"predicted": p, "label": y, "count": n}
                           for (p, y), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))],
            "confirmations": sum(e.get("predicted") == e.get("label") for e in readable),
            "without_prediction": sum(e.get("predicted") is None for e in readable),
            "unreadable_ids": dict(sorted(unreadable.items())),
            "suspicious_clients": groups("client", scored.clients),
            "suspicious_networks": groups("network", scored.networks)}


def _suspects(rows, what):
    if not rows:
        return f"no {what} ids in these records"
    return table([[what.upper(), "SCORE", "RECORDS", "PENDING", "WHY"]]
                 + [[r["key"], f"{r['score']:.1f}" + (" !" if r["score"] >= triage.SUSPICIOUS else ""), r["records"],
                     r["pending"], "; ".join(r["reasons"])] for r in rows])


def cmd_stats(store, args):
    since = (_today() - datetime.timedelta(days=args.days - 1)).isoformat() if args.days else None
    keep = (lambda day: day is not None and day >= since) if since else None
    found = records.index(store)
    states = decisions.states(store, found.ids)
    s = summary(list(records.entries(store, found, keep, progress, PROGRESS_EVERY)), states, store.uri, since,
                args.top)
    if args.json:
        print(json.dumps(s, indent=2))
        return EXIT_OK
    window = f" since {since} (the last {args.days} days, UTC)" if since else ""
    print(f"{store.uri}: {_records(s['records'])}{window} from {s['writers']:,} writers: {s[PENDING]:,} pending, "
          f"{s[APPROVED]:,} approved, {s[REJECTED]:,} rejected; {s['unreadable']:,} unreadable")
    if not s["records"]:
        return EXIT_OK
    print(f"\nmost suspicious clients first (! from a score of {triage.SUSPICIOUS}; "
          f"`reject --client ID` rejects all of one):\n" + _suspects(s["suspicious_clients"], "client"))
    if s["suspicious_networks"]:
        print("\nmost suspicious networks first (`reject --network KEY`):\n"
              + _suspects(s["suspicious_networks"], "network"))
    print("\nby day:\n" + table([["DAY", "RECORDS"], *s["by_day"].items()]))
    print("\nby label:\n" + table([["LABEL", *s["by_label"]], ["RECORDS", *s["by_label"].values()]]))
    print("\nmisread (predicted → label), most common first:")
    print(table([["READING", "RECORDS"], *[[f"{c['predicted']} → {c['label']}", c["count"]]
                                           for c in s["confusions"]]]) if s["confusions"] else "none")
    print(f"\nconfirmations (predicted = label): {s['confirmations']:,}; "
          f"without a prediction: {s['without_prediction']:,}")
    if s["unreadable_ids"]:
        print("\nunreadable (training skips them; `show ID` says more):")
        print(table([[i[:SHORT_ID], why] for i, why in s["unreadable_ids"].items()]))
    return EXIT_OK


def _status(entry, states):
    return f"UNREADABLE: {entry.problem}" if entry.problem else states[entry.id]


def cmd_list(store, args):
    found = records.index(store)
    states = decisions.states(store, found.ids)
    if args.suspicious:  # triage needs every record the filters pass, not only the newest
        chosen, _, _ = _selected(store, args, None, states, found)
        scores = triage.triage(e.as_triage() for e in chosen if not e.problem).by_id
        chosen.sort(key=lambda e: -scores[e.id].score if e.id in scores else 0)
        more, chosen = len(chosen) > args.limit, chosen[:args.limit]
    else:
        chosen, more, _ = _selected(store, args, args.limit, states, found)
        scores = {}
    if args.json:
        print(json.dumps([{"id": e.id, "day": e.day, "created_at": e.get("created_at"), "predicted": e.get("predicted"),
                           "label": e.get("label"), "model_version": e.get("model_version"),
                           "client_id": e.get("client_id"), "network": e.get("network"), "state": states[e.id],
                           "unreadable": e.problem}
                          | ({"score": round(scores[e.id].score, 2), "reasons": scores[e.id].reasons}
                             if e.id in scores else {}) for e in chosen], indent=2))
        return EXIT_OK
    if not chosen:
        print(f"{store.uri}: no records{_filters(args)}")
        return EXIT_OK
    header = ["ID", "CREATED", "READING", "MODEL", "CLIENT", "STATE"] + (["SCORE", "WHY"] if args.suspicious else [])
    print(table([header] + [[e.id[:SHORT_ID], e.get("created_at") or "-", e.reading(), e.get("model_version") or "-",
                             e.get("client_id") or "-", _status(e, states)]
                            + ([f"{scores[e.id].score:.1f}", "; ".join(scores[e.id].reasons) or "-"]
                               if args.suspicious and e.id in scores else ["-", "-"] if args.suspicious else [])
                            for e in chosen]))
    if more:
        print(f"(the {'most suspicious' if args.suspicious else 'newest'} {args.limit}; --limit N shows more)")
    return EXIT_OK


# ---- show ---------------------------------------------------------------------------------

def _shown(name, value):
    if name == "strokes" and isinstance(value, list):
        return f"{len(value)} strokes, {sum(len(s) for s in value if isinstance(s, list))} points"
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)[:200]


def _loose_json(raw):
    """What of an unreadable record's fields can be shown: its JSON object, or nothing."""
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def cmd_show(store, args):
    if len(args.id) == 64:
        if not store.exists(contract.record_key(args.id)):
            raise ReviewError(f"no record {args.id} in {store.uri}; `python -m training.feedback --store {store.uri} "
                              "list` shows the records", EXIT_NOT_FOUND)
        record_id = args.id
    else:
        record_id = _resolve(records.index(store), args.id, store.uri)
    raw = store.read(contract.record_key(record_id))
    decided = decisions.history(store, record_id)
    try:
        record, pixels = records.check(raw, record_id)
        problem = None
    except (ValueError, KeyError, TypeError) as e:
        record, pixels, problem = _loose_json(raw), None, f"{type(e).__name__}: {e}"
    entry = records.Entry(record_id, None, record, pixels, problem)
    state = decided[-1]["decision"] if decided else PENDING
    rows = [("id", record_id), ("state", state)]
    rows += [("decided", decisions.describe(d)) for d in decided]
    rows += [("unreadable", f"{problem}; training skips it")] if problem else []
    rows += [("reading", entry.reading())] if not problem else []
    names = [n for n in FIELD_ORDER if n in record] + sorted(set(record) - {*FIELD_ORDER, "id", "pixels"})
    rows += [(name, _shown(name, record[name])) for name in names]
    print(table(rows))
    if pixels is not None:
        print(sheet.ascii_art(pixels))
    return EXIT_INVALID if problem else EXIT_OK


# ---- approve and reject -------------------------------------------------------------------

def _targets(store, args, found, states):
    """The ids approve or reject acts on: the named ones (all of them, in any state), else
    those the filters choose (approve: pending ones only, unless --state says otherwise)."""
    named = [_resolve(found, text, store.uri) for text in dict.fromkeys(args.ids)]
    selecting = named or any(getattr(args, n) is not None for n in ("client", "network", "day", "label", "reading",
                                                                    "state"))
    if not selecting:
        raise ReviewError(f"name the records to {args.name}: IDs, or --client, --network, --day, --label, --reading "
                          "(see --help)", EXIT_USAGE)
    state = args.state or (PENDING if args.name == "approve" and not named else None)
    if not _reads_records(args) and not args.day:
        return [i for i in named or found.ids if state is None or states[i] == state]
    pool = set(named)
    chosen, _, _ = _selected(store, argparse.Namespace(**{**vars(args), "state": state}), None, states, found)
    return [e.id for e in chosen if not pool or e.id in pool]


def cmd_decide(store, args):
    decision = APPROVED if args.name == "approve" else REJECTED
    found = records.index(store)
    states = decisions.states(store, found.ids)
    ids = _targets(store, args, found, states)
    before = collections.Counter(states[i] for i in ids)
    change = [i for i in ids if states[i] != decision]
    said = ", ".join(f"{before[s]:,} {s}" for s in STATES if before[s])
    print(f"{store.uri}: {_records(len(ids))} chosen{_filters(args)}" + (f": {said}" if said else "")
          + f"; {_records(len(change))} will be {decision}")
    if args.dry_run or not change:
        for record_id in change[:SHOWN_IDS]:
            print(f"would be {decision}: {record_id} (now {states[record_id]})")
        if len(change) > SHOWN_IDS:
            print(f"... and {len(change) - SHOWN_IDS:,} more")
        print(f"{store.uri}: {'dry run: ' if args.dry_run else ''}nothing written")
        return EXIT_OK
    by = actor()
    results = decisions.decide(store, change, decision, args.reason, by=by, current=states)
    written = [r for r in results if r.written]
    for r in written[:SHOWN_IDS]:
        print(f"{decision} {r.id} (was {r.before})")
    if len(written) > SHOWN_IDS:
        print(f"... and {len(written) - SHOWN_IDS:,} more")
    print(f"{store.uri}: {_records(len(written))} {decision} by {by}: {args.reason}"
          + ("; training uses approved records" if decision == APPROVED else
             "; training leaves them out, the records stay for audit"))
    return EXIT_OK


# ---- the contact sheet --------------------------------------------------------------------

def cmd_sheet(store, args):
    found = records.index(store)
    states = decisions.states(store, found.ids)
    chosen, more, unreadable = _selected(store, args, args.limit, states, found, readable_only=True)
    left_out = (f"; {len(unreadable)} unreadable left out ({', '.join(i[:SHORT_ID] for i in unreadable[:5])}"
                f"{', ...' if len(unreadable) > 5 else ''}; show ID says why)") if unreadable else ""
    if not chosen:
        print(f"{store.uri}: no readable records{_filters(args)}; nothing written{left_out}")
        return EXIT_OK
    title = f"{_records(len(chosen))}, newest first; red: rejected, grey: pending"
    try:
        sheet.save_png(sheet.contact_sheet(chosen, states, args.scale, title), args.out)
    except OSError as e:
        raise ReviewError(f"cannot write --out {args.out}: {e.strerror}; give a file in a writable directory",
                          EXIT_USAGE) from None
    counts = collections.Counter(states[e.id] for e in chosen)
    print(f"{args.out}: {_records(len(chosen))} of {store.uri}{_filters(args)}, newest first, "
          f"{sheet.SHEET_COLUMNS} a row, {counts[REJECTED]} rejected (framed in red), {counts[PENDING]} pending "
          "(captioned in grey)" + (f"; the newest {args.limit}, --limit N draws more" if more else "") + left_out)
    return EXIT_OK


# ---- the parser ---------------------------------------------------------------------------

def _day(text):
    try:
        if records.DAY.fullmatch(text):
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


def parser():
    top, command = store_cli("python -m training.feedback", "feedback store", "FEEDBACK_URI", DEFAULT_STORE,
                             DESCRIPTION, EPILOG)

    def filters(sub, limit=None):
        sub.add_argument("--day", type=_day, help="only the records sent on this day, YYYY-MM-DD (UTC)")
        sub.add_argument("--label", type=int, choices=range(contract.CLASSES), metavar="D",
                         help="only the records labelled with digit D")
        sub.add_argument("--reading", type=int, choices=range(contract.CLASSES), metavar="D",
                         help="only the records the model read as digit D")
        sub.add_argument("--client", metavar="CLIENT_ID", help="only the records this client sent")
        sub.add_argument("--network", metavar="KEY", help="only the records from this network (its key, as stats "
                                                          "shows it)")
        sub.add_argument("--state", choices=STATES, help="only the records in this review state")
        if limit:
            sub.add_argument("--limit", type=whole(1), default=limit, metavar="N", help=f"at most N (default {limit})")

    sub = command("stats", cmd_stats, "counts by review state, the most suspicious clients and networks first "
                  "(training/feedback/triage.py: why each is suspect), and counts by day, label and reading "
                  "(predicted → label, the misread most common first)")
    sub.add_argument("--days", type=whole(1), metavar="N", help="only the last N days, today (UTC) included")
    sub.add_argument("--top", type=whole(1), default=TOP, metavar="N",
                     help=f"the N most suspicious clients and networks (default {TOP})")
    sub.add_argument("--json", action="store_true", help="the counts as a JSON object")
    sub = command("list", cmd_list, f"records, newest first (or most suspicious first): id (its first {SHORT_ID} "
                  "hex digits), created, predicted → label, model version, client id, review state")
    filters(sub, LIST_LIMIT)
    sub.add_argument("--suspicious", action="store_true",
                     help="most suspicious first, with the score and why (reads every record the filters pass)")
    sub.add_argument("--json", action="store_true", help="the same rows as a JSON list, with the full ids")
    sub = command("show", cmd_show, "one record without its pixels, its digit drawn as text, its review state and "
                  f"every decision on it (who, when, why); exit {EXIT_INVALID} if it is unreadable")
    sub.add_argument("id", type=_record_id, metavar="ID", help=f"a record id, or its first {ID_PREFIX}+ hex digits")
    for name, what in (("approve", "training may use them"), ("reject", "training leaves them out")):
        sub = command(name, cmd_decide, f"{name} records: {what}. Names IDs, or chooses by the filters (all of a "
                      f"client or a network with --client, --network); says how many will change first. "
                      + ("A bulk approve takes pending records only. " if name == "approve" else "")
                      + "A record already in that state is left as it is")
        sub.add_argument("ids", nargs="*", type=_record_id, metavar="ID",
                         help=f"record ids, or their first {ID_PREFIX}+ hex digits")
        filters(sub)
        sub.add_argument("--reason", type=reason("scribble, not a digit"), required=True,
                         help="why, for whoever looks later (required)")
        sub.add_argument("--dry-run", action="store_true", help="say what would change, and write nothing")
    sub = command("sheet", cmd_sheet, "a contact sheet PNG of the newest readable records: each digit white on "
                  f"black, captioned predicted → label and its id's first {ID_PREFIX} hex digits; rejected ones "
                  "framed in red, pending ones captioned in grey")
    sub.add_argument("--out", required=True, metavar="FILE.png", help="the PNG to write (replaced whole)")
    filters(sub, SHEET_LIMIT)
    sub.add_argument("--scale", type=whole(2), default=sheet.SHEET_SCALE, metavar="S",
                     help=f"each 28x28 pixel becomes SxS (default {sheet.SHEET_SCALE}, at least 2)")
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
