"""The real-drawings evaluation set: approved corrections of held-out writers, frozen in the model store.

The promotion gate (training/champion.py) grades the champion and the challenger on it, so
it holds only what nobody anonymous can write or steer:

- only **approved** corrections (training/feedback/decisions.py): no pending or rejected
  record is ever in it. A version whose records are no longer all approved (a reviewer
  reversed one) is replaced by a new version without them;
- only **held-out writers'**, chosen by a keyed hash of the client id
  (training/feedback/loader.py: ``held_out``) with a secret kept in the model store
  (``evalsets/holdout.key``, made once by the first run that needs it). A client picks its
  own id, but without the secret it cannot tell which ids are held out, so it cannot
  choose its way in; and held-out writers never train;
- at most PER_WRITER records of one writer, and EVAL_MAX in all, so no client fills it.

It is frozen: ``evalsets/<version>.json`` (service/contract.py) holds the ids, labels,
writers and pixels, is created once and never changes, and the newest version is the
one in use, so both models of a run, and later runs, see the same digits. A run freezes
a new version only when records must leave it, or when the approved held-out corrections
it has not yet taken number at least GROWTH_MIN and GROWTH of its size.
"""
import base64
import dataclasses
import datetime
import hashlib
import json
import secrets

import numpy as np

from service import contract
from service.store import AlreadyExists, StoreError, StoreNotFound
from training.feedback import decisions

EVAL_MAX = 5_000     # records in the set at most
PER_WRITER = 10      # records of one writer at most: many writers, a few digits each
GROWTH, GROWTH_MIN = 0.1, 20  # new records that make a new version: this share of the set, and at least this many


@dataclasses.dataclass
class EvalSet:
    """A frozen evaluation set: its ``version``, record ``ids``, ``writers``, labels ``y``
    [N] and digits ``x`` uint8 [N, 28, 28], in one order."""

    version: str
    ids: list
    writers: list
    x: np.ndarray
    y: np.ndarray

    def __len__(self):
        return len(self.ids)


def secret(store):
    """The secret that picks the held-out writers: ``evalsets/holdout.key`` of the model
    ``store``, made (32 random bytes, hex) by the first caller; every later run reads it."""
    try:
        return store.read(contract.HOLDOUT_KEY).strip()
    except StoreNotFound:
        pass
    try:
        store.create(contract.HOLDOUT_KEY, secrets.token_hex(32).encode() + b"\n")
    except AlreadyExists:  # another run made it first
        pass
    return store.read(contract.HOLDOUT_KEY).strip()


def _encode(version, ids, writers, x, y, source):
    created = f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
    return json.dumps({"version": version, "created_at": created, "source": source, "count": len(ids), "ids": ids,
                       "writers": writers, "labels": [int(v) for v in y],
                       "pixels": base64.b64encode(x.tobytes()).decode()}, sort_keys=True).encode()


def _decode(raw, version):
    data = json.loads(raw)
    ids, writers, labels = data["ids"], data["writers"], data["labels"]
    x = np.frombuffer(base64.b64decode(data["pixels"]), np.uint8)
    if not len(ids) == len(writers) == len(labels) or x.size != len(ids) * contract.SIDE * contract.SIDE:
        raise ValueError("its ids, writers, labels and pixels do not match in number")
    return EvalSet(version, list(ids), list(writers), x.reshape(-1, contract.SIDE, contract.SIDE),
                   np.asarray(labels, np.uint8))


def versions(store):
    """The frozen versions in the model ``store``, oldest first (their names sort by time)."""
    names = (k.rsplit("/", 1)[-1] for k in store.list(contract.EVALSETS))
    return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))


def read(store, version):
    """The frozen ``version`` of the model ``store``, as an EvalSet; StoreNotFound if there
    is none, ValueError (or KeyError, TypeError) if it cannot be read as one."""
    return _decode(store.read(contract.evalset_key(version)), version)


def newest(store, log=print):
    """The newest readable frozen version in ``store``, or None; an unreadable one is logged
    and passed over."""
    for version in reversed(versions(store)):
        try:
            return read(store, version)
        except (StoreNotFound, ValueError, KeyError, TypeError) as e:
            log(f"evalset: {store.uri}/{contract.evalset_key(version)} is unreadable ({type(e).__name__}: {e}); "
                "passing over it")
    return None


def update(store, held, states, source, log=print):
    """The evaluation set this run grades with, from the model ``store``'s newest version,
    the approved held-out corrections the loader found (``held``, a loader.Corrections) and
    every record's review ``states``: the newest version as it is, or a new version frozen
    in ``store`` (without records no longer approved, with the new ones when there are
    enough). None when there is nothing to grade with. ``source`` (the feedback store's URI)
    is recorded in a new version."""
    current = newest(store, log)
    keep = [k for k in range(len(current))
            if states.get(current.ids[k]) == decisions.APPROVED] if current else []
    gone = len(current) - len(keep) if current else 0
    have = set(current.ids) if current else set()
    per_writer = {}
    for k in keep:
        per_writer[current.writers[k]] = per_writer.get(current.writers[k], 0) + 1
    new = []
    for k, record_id in enumerate(held.ids):
        writer = held.writers[k]
        if record_id in have or per_writer.get(writer, 0) >= PER_WRITER or len(keep) + len(new) >= EVAL_MAX:
            continue
        per_writer[writer] = per_writer.get(writer, 0) + 1
        have.add(record_id)
        new.append(k)
    grow = len(new) >= max(GROWTH_MIN, GROWTH * len(keep)) or (current is None and new)
    if current is not None and not gone and not grow:
        log(f"evalset: {current.version}: {len(current):,} approved corrections of held-out writers, as frozen"
            + (f" ({len(new):,} new ones wait until there are {max(GROWTH_MIN, int(GROWTH * len(keep))):,})"
               if new else ""))
        return current
    if not keep and not new:
        log("evalset: none yet (no approved corrections of held-out writers"
            + ("; every one of the last version's was reversed)" if gone else ")"))
        return None
    ids = [current.ids[k] for k in keep] + [held.ids[k] for k in new]
    writers = [current.writers[k] for k in keep] + [held.writers[k] for k in new]
    x = np.concatenate([current.x[keep] if current else np.zeros((0, contract.SIDE, contract.SIDE), np.uint8),
                        held.x[new] if new else np.zeros((0, contract.SIDE, contract.SIDE), np.uint8)])
    y = np.concatenate([current.y[keep] if current else np.zeros(0, np.uint8),
                        held.y[new] if new else np.zeros(0, np.uint8)]).astype(np.uint8)
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    version = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}-{digest[:8]}"
    try:
        store.create(contract.evalset_key(version), _encode(version, ids, writers, x, y, source))
    except AlreadyExists:  # the same records frozen by another run in the same second
        pass
    except StoreError as e:
        raise StoreError(f"cannot freeze the evaluation set in {store.uri}: {e}") from e
    log(f"evalset: froze {version} in {store.uri}: {len(ids):,} approved corrections of "
        f"{len(set(writers)):,} held-out writers"
        + (f" ({current.version} less {gone:,} no longer approved, plus {len(new):,} new)" if current
           else f" ({len(new):,} new)"))
    return EvalSet(version, ids, writers, x, y)
