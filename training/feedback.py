"""The corrections people sent (POST /feedback), as training data.

``load(uri)`` reads every accepted record of a feedback store (service/contract.py has the
layout): not rejected by an operator, readable, and well-formed. A record that is not is
skipped and counted, with its id in the log; it never stops a run. ``split`` holds out a
fixed share of the writers, by client id, as the real-drawings validation set, so that no
writer is on both sides: the set measures how well the model reads people it has not learnt from.
"""
import base64
import concurrent.futures
import dataclasses
import hashlib
import json

import numpy as np

from service import contract
from service.store import StoreError, open_store

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
