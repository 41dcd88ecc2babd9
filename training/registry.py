"""The model registry: which versions a store holds, which one LATEST names, and every move of it.

Every move of LATEST (a publish, a promote, a rollback) goes through ``move_latest``: it
writes the new pointer with the store's compare-and-swap, so of two concurrent movers
exactly one wins and the other gets PointerConflict. The pointer itself is the history
entry: ``{"version", "seq", "previous", "action", "by", "reason", "at"}``, and after the swap
an immutable copy goes to ``history/<seq>.json`` (create-only). A GCS object cannot be
appended to, so the history is one object per move on both backends; numbering them by
``seq``, which only the winner of the swap can take, makes them safe under concurrent
writers. If a mover dies between its swap and its copy, LATEST still holds the entry
(``history`` lists it from there), and the next move writes the missing copy first.

The CLI (``python -m training.registry --help``) lists, shows, promotes, rolls back and
prunes versions over a directory, a PVC mount or ``gs://bucket/prefix``, through the store
client only.
"""
import json
import sys

from service import contract
from service.store import AlreadyExists, StoreError, StoreNotFound, StoreUnreachable, load_verified
from training.cli import (EXIT_CONFLICT, EXIT_INVALID, EXIT_NO_PREVIOUS, EXIT_NOT_FOUND, EXIT_OK,  # noqa: F401
                          EXIT_UNREACHABLE, EXIT_UNVERIFIED, EXIT_USAGE, CliError, actor, dump, now, reason, run_cli,
                          store_cli, table, whole)


def record(store, pointer):
    """Make sure ``pointer`` (a LATEST value with a seq) has its history copy."""
    if isinstance(pointer, dict) and isinstance(pointer.get("seq"), int):
        try:
            store.create(contract.history_key(pointer["seq"]), dump(pointer))
        except AlreadyExists:
            pass


def move_latest(store, version, pointer, token, action, by, reason):
    """Point LATEST at ``version``, if it still holds ``pointer`` (read with ``token``).

    Raises PointerConflict if another writer moved it first; returns the new pointer.
    """
    record(store, pointer)
    seq = pointer.get("seq") if pointer else None
    if not isinstance(seq, int):  # an empty store, or a pointer written before history
        seq = _last_seq(store)
    entry = {"version": version, "seq": seq + 1, "previous": pointer["version"] if pointer else None,
             "action": action, "by": by, "reason": reason, "at": now()}
    store.swap_latest(entry, token)
    record(store, entry)
    return entry


def _last_seq(store):
    names = [k.rsplit("/", 1)[-1] for k in store.list(contract.HISTORY)]
    seqs = [int(n.split(".")[0]) for n in names if n.split(".")[0].isdigit()]
    return max(seqs, default=0)


def history(store):
    """Every move of LATEST, oldest first (the current pointer included even if its copy is missing)."""
    entries = {}
    try:
        keys = store.list(contract.HISTORY)
    except StoreNotFound:
        keys = []
    for key in keys:
        try:
            entry = json.loads(store.read(key))
        except (StoreNotFound, ValueError):
            continue
        if isinstance(entry, dict) and isinstance(entry.get("seq"), int):
            entries[entry["seq"]] = entry
    pointer, _ = store.read_latest()
    if pointer and isinstance(pointer.get("seq"), int):
        entries.setdefault(pointer["seq"], pointer)
    return [entries[k] for k in sorted(entries)]


class RegistryError(CliError):
    """A registry command cannot do what was asked; ``exit_code`` says which kind of failure."""


DEFAULT_STORE = contract.DEFAULT_MODEL_URI  # the service's own default, so both see the same local store
RECENT = 3  # prune keeps the last RECENT distinct versions LATEST named: somewhere to roll back to

DESCRIPTION = """The model registry of a model store: list its versions, show one, promote one to
LATEST, roll LATEST back, list every move of LATEST, and prune old versions.

The store is a directory, a PVC mount or gs://bucket/prefix (--store, else env MODEL_URI,
else ./model-store). Every move of LATEST is a compare-and-swap recorded in the store's
history, with who moved it (env DIGITDRAW_ACTOR, else user@host) and why."""

EPILOG = f"""exit codes:
  {EXIT_OK}  ok
  {EXIT_INVALID}  the store holds something unusable (models/LATEST is not a valid pointer)
  {EXIT_USAGE}  usage: a bad command, flag or store URI
  {EXIT_NOT_FOUND}  the version is not in the store
  {EXIT_UNREACHABLE}  the store cannot be reached (network, credentials, missing bucket or mount)
  {EXIT_CONFLICT}  another writer moved LATEST first; run history and try again
  {EXIT_UNVERIFIED}  the version does not verify (model.json unreadable or model.onnx's sha256 differs)
  {EXIT_NO_PREVIOUS}  rollback: LATEST names no previous version to go back to"""

PRUNE_HELP = f"""Delete old versions, keeping the N newest, the one LATEST names and the one it
would roll back to, the last {RECENT} distinct versions LATEST named in the history, and every
--protect. Pass --protect for each version a running service is pinned to (infra/rollout.sh
knows the canary's). Everything is read before anything is deleted, and LATEST is read again
before each deletion: if it moved, prune stops (exit {EXIT_CONFLICT})."""


def _version_of(pointer):
    return pointer["version"] if pointer else None


def _read_meta(store, version):
    """(model.json as a dict, None), or (None, why it is broken)."""
    try:
        meta = json.loads(store.read(contract.model_key(version, contract.META_FILE)))
    except StoreNotFound:
        return None, "no model.json"
    except ValueError:
        return None, "model.json is not valid JSON"
    if not isinstance(meta, dict):
        return None, "model.json is not a JSON object"
    return meta, None


def _row(version, latest, meta, broken):
    """One version as ``list`` shows it, from its model.json (``meta``) or why that is ``broken``."""
    meta = meta or {}
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    quantization = meta.get("quantization") if isinstance(meta.get("quantization"), dict) else {}
    return {"version": version, "latest": latest, "created_at": meta.get("created_at"),
            "val_accuracy": metrics.get("val_accuracy"), "real_accuracy": metrics.get("real_accuracy"),
            "size_bytes": meta.get("size_bytes"),
            "quantization": None if broken else "int8" if quantization.get("scheme") == "int8" else "float",
            "broken": broken}


def _percent(value):
    return f"{value:.2%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _size(n):
    return f"{n / 1024:,.1f} KiB" if isinstance(n, int) and not isinstance(n, bool) else "-"


def _require(store, version):
    if version not in store.list_versions():
        raise RegistryError(f"version {version} is not in {store.uri}; run `python -m training.registry "
                            f"--store {store.uri} list` to see its versions", EXIT_NOT_FOUND)


def _problem(store, version):
    """Why ``version`` does not verify (the service would refuse it), or None if it does."""
    try:
        load_verified(store, version)
    except StoreUnreachable:
        raise
    except StoreError as e:
        return str(e)
    return None


def _verified(store, version, doing):
    _require(store, version)
    problem = _problem(store, version)
    if problem:
        raise RegistryError(f"not {doing} {version} in {store.uri}: it does not verify: {problem}; "
                            "pick another version or publish the model again", EXIT_UNVERIFIED)


def _move(store, version, pointer, token, action, reason):
    entry = move_latest(store, version, pointer, token, action, actor(), reason)
    print(f"{store.uri}: LATEST {entry['previous'] or '(none)'} -> {version} "
          f"({action} #{entry['seq']} by {entry['by']}{': ' + reason if reason else ''})")
    return EXIT_OK


def cmd_list(store, args):
    pointer, _ = store.read_latest()
    current = _version_of(pointer)
    names = store.list_versions()
    rows = [_row(v, v == current, *_read_meta(store, v)) for v in reversed(names)]
    if current and current not in names:
        print(f"warning: {store.uri}: LATEST names {current}, which is not in the store; promote a listed version",
              file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"{store.uri}: no versions")
    else:
        print(table([["", "VERSION", "CREATED", "VAL ACC", "REAL ACC", "SIZE", "MODEL"]]
                    + [["*" if r["latest"] else "", r["version"], r["created_at"] or "-", _percent(r["val_accuracy"]),
                        _percent(r["real_accuracy"]), _size(r["size_bytes"]),
                        f"BROKEN: {r['broken']}" if r["broken"] else r["quantization"]] for r in rows]))
        print("* = LATEST")
    return EXIT_OK


def cmd_show(store, args):
    pointer, _ = store.read_latest()
    version = args.version
    _require(store, version)
    meta, broken = _read_meta(store, version)
    problem = _problem(store, version)
    row = _row(version, version == _version_of(pointer), meta, broken)
    info = meta or {}
    lines = [("version", version + ("  (LATEST)" if row["latest"] else "")),
             ("created", row["created_at"] or "-"),
             ("run", info.get("run_name") or "-"),
             ("code", info.get("code_revision") or "-"),
             ("data", info.get("data_source") or "-"),
             ("accuracy", f"validation {_percent(row['val_accuracy'])}, "
                          f"real drawings {_percent(row['real_accuracy'])}"),
             ("model", f"{row['quantization'] or '-'}, {_size(row['size_bytes'])}"),
             ("verified", f"NO: {problem}" if problem else f"yes (model.onnx has sha256 {info['sha256'][:12]}...)")]
    if "evaluation" in info:
        lines.append(("evaluation", json.dumps(info["evaluation"], sort_keys=True)))
    print(table(lines))
    print(f"model.json:\n{json.dumps(meta, indent=2, sort_keys=True)}" if meta else f"model.json: {broken}")
    return EXIT_UNVERIFIED if problem else EXIT_OK


def cmd_promote(store, args):
    pointer, token = store.read_latest()  # the token the swap must still match
    _verified(store, args.version, "promoting")
    if _version_of(pointer) == args.version:
        print(f"{store.uri}: {args.version} is already LATEST; nothing changed")
        return EXIT_OK
    return _move(store, args.version, pointer, token, "promote", args.reason)


def cmd_rollback(store, args):
    pointer, token = store.read_latest()
    previous = pointer.get("previous") if pointer else None
    if not isinstance(previous, str) or not previous:
        why = "it has no LATEST" if not pointer else f"LATEST ({pointer['version']}) names no previous version"
        raise RegistryError(f"nothing to roll back to in {store.uri}: {why}; promote a version by name instead",
                            EXIT_NO_PREVIOUS)
    _verified(store, previous, "rolling back to")
    return _move(store, previous, pointer, token, "rollback", args.reason)


def cmd_history(store, args):
    entries = history(store)
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True))
    elif not entries:
        print(f"{store.uri}: no moves of LATEST recorded")
    else:
        print(table([["SEQ", "AT", "ACTION", "FROM", "TO", "BY", "REASON"]]
                    + [[e["seq"], e.get("at") or "-", e.get("action") or "-", e.get("previous") or "-",
                        e.get("version") or "-", e.get("by") or "-", e.get("reason") or "-"] for e in entries]))
    return EXIT_OK


def _kept(names, pointer, entries, keep, protect):
    """The versions of ``names`` (oldest first) that prune keeps, each with why."""
    present, reasons = set(names), {}

    def mark(version, why):
        if version in present:
            reasons.setdefault(version, []).append(why)

    if pointer:
        mark(pointer["version"], "LATEST")
        mark(pointer.get("previous"), "rollback target")
    recent = []
    for entry in reversed(entries):
        if len(recent) == RECENT:
            break
        if entry.get("version") not in recent:
            recent.append(entry.get("version"))
            mark(entry.get("version"), "recent LATEST")
    for version in names[max(len(names) - keep, 0):]:
        mark(version, f"newest {keep}")
    for version in protect:
        mark(version, "protected")
    return reasons


def cmd_prune(store, args):
    # Everything is read before anything is deleted: a store that fails midway deletes nothing.
    pointer, _ = store.read_latest()
    names = store.list_versions()
    entries = history(store)
    unknown = [v for v in args.protect if v not in names]
    if unknown:
        raise RegistryError(f"--protect {', '.join(unknown)}: not in {store.uri}; check the version name "
                            "(infra/rollout.sh prints the ones the service is pinned to); nothing was deleted",
                            EXIT_NOT_FOUND)
    keep = _kept(names, pointer, entries, args.keep, args.protect)
    doomed = [v for v in names if v not in keep]
    for version in reversed(names):
        if version in keep:
            print(f"keep    {version}  ({', '.join(keep[version])})")
    if args.dry_run:
        for version in doomed:
            print(f"would delete {version}")
        print(f"{store.uri}: dry run: would delete {len(doomed)} of {len(names)} version(s); nothing was deleted")
        return EXIT_OK
    for done, version in enumerate(doomed):
        if store.read_latest()[0] != pointer:
            raise RegistryError(f"{store.uri}: another writer moved LATEST while pruning; stopped after deleting "
                                f"{done} of {len(doomed)} version(s); run history and try again", EXIT_CONFLICT)
        try:
            store.delete(f"{contract.MODELS}/{version}")
        except StoreUnreachable as e:
            raise StoreUnreachable(f"{e}; stopped after deleting {done} of {len(doomed)} version(s), and {version} "
                                   "may be partly deleted (list shows it broken); run prune again") from e
        print(f"deleted {version}")
    print(f"{store.uri}: deleted {len(doomed)} of {len(names)} version(s)")
    return EXIT_OK


REASON = reason("v12 misreads 7s on the canary")


def parser():
    top, command = store_cli("python -m training.registry", "model store", "MODEL_URI", DEFAULT_STORE, DESCRIPTION,
                             EPILOG)

    sub = command("list", cmd_list, "every version, newest first: created, validation and real-drawings accuracy, "
                  "size, float or int8, * on the one LATEST names; a version whose model.json is missing or "
                  "unreadable is listed as BROKEN")
    sub.add_argument("--json", action="store_true", help="the same rows as a JSON list")
    sub = command("show", cmd_show, "a version's model.json, where it came from (run, code revision, data) and "
                  f"whether it verifies (sha256 of model.onnx); exit {EXIT_UNVERIFIED} if it does not")
    sub.add_argument("version", metavar="VERSION")
    sub = command("promote", cmd_promote, "verify VERSION and point LATEST at it; promoting the version LATEST "
                  "already names changes nothing")
    sub.add_argument("version", metavar="VERSION")
    sub.add_argument("--reason", type=REASON, required=True, help="why, for the history (required)")
    sub = command("rollback", cmd_rollback, "point LATEST back at the version it replaced (the pointer's "
                  "previous), after verifying it")
    sub.add_argument("--reason", type=REASON, help="why, for the history")
    sub = command("history", cmd_history, "every move of LATEST, oldest first: seq, time, action, from, to, by, "
                  "reason")
    sub.add_argument("--json", action="store_true", help="the entries as a JSON list")
    sub = command("prune", cmd_prune, "delete old versions (--dry-run to see which)", PRUNE_HELP)
    sub.add_argument("--keep", type=whole(0), required=True, metavar="N",
                     help="how many of the newest versions to keep")
    sub.add_argument("--protect", action="extend", nargs="+", default=[], metavar="VERSION",
                     help="never delete VERSION (one a running service is pinned to); repeatable")
    sub.add_argument("--dry-run", action="store_true", help="print what would be deleted and delete nothing")
    return top


def main(argv=None):
    """Run the CLI; returns the exit code (EXIT_*)."""
    return run_cli(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
