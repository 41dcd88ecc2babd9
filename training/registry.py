"""The model registry: which versions a store holds, which one LATEST names, and every move of it.

Every move of LATEST (a publish, a promote, a rollback) goes through ``move_latest``: it
writes the new pointer with the store's compare-and-swap, so of two concurrent movers
exactly one wins and the other gets PointerConflict. The pointer itself is the history
entry: ``{"version", "seq", "previous", "action", "by", "reason", "at"}``, and after the swap
an immutable copy goes to ``history/<seq>.json`` (create-only). A GCS object cannot be
appended to, so the history is one object per move on both backends; numbering them by
``seq``, which only the winner of the swap can take, makes them safe under concurrent
writers. If a mover dies between its swap and its copy, LATEST still holds the entry, and
the next move (or ``history``) writes the missing copy first.

The CLI (``python -m training.registry --help``) lists, shows, promotes, rolls back and
prunes versions over a directory, a PVC mount or ``gs://bucket/prefix``.
"""
import datetime
import getpass
import json
import os
import socket

from service import contract
from service.store import AlreadyExists, StoreError, StoreNotFound


def actor():
    """Who is moving LATEST: DIGITDRAW_ACTOR if set (a RayJob names its run), else user@host."""
    if os.environ.get("DIGITDRAW_ACTOR"):
        return os.environ["DIGITDRAW_ACTOR"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _now():
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}"


def _dump(entry):
    return (json.dumps(entry, sort_keys=True) + "\n").encode()


def record(store, pointer):
    """Make sure ``pointer`` (a LATEST value with a seq) has its history copy."""
    if isinstance(pointer, dict) and isinstance(pointer.get("seq"), int):
        try:
            store.create(contract.history_key(pointer["seq"]), _dump(pointer))
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
             "action": action, "by": by, "reason": reason, "at": _now()}
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


class RegistryError(StoreError):
    """A registry command cannot do what was asked; ``exit_code`` says which kind of failure."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code
