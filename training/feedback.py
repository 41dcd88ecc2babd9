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
from service.store import StoreError, StoreNotFound, open_store

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


def parse(raw, record_id):
    """(pixels uint8 [28, 28], label, writer) of one record's bytes; ValueError says what is wrong."""
    record = json.loads(raw)
    pixels = np.frombuffer(base64.b64decode(record["pixels"], validate=True), np.uint8)
    if pixels.size != contract.SIDE * contract.SIDE:
        raise ValueError(f"{pixels.size} pixels, not {contract.SIDE}x{contract.SIDE}")
    if hashlib.sha256(pixels.tobytes()).hexdigest() != record_id:
        raise ValueError("its pixels do not hash to its id")
    label = record["label"]
    if type(label) is not int or not 0 <= label < contract.CLASSES:
        raise ValueError(f"label {label!r} is not a digit")
    # A record without a client id is a writer of its own.
    return pixels.reshape(contract.SIDE, contract.SIDE), label, record.get("client_id") or f"record:{record_id}"


def record_ids(store):
    """The ids of every record in ``store`` and the set of rejected ones."""
    ids = [k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list(contract.RECORDS) if k.endswith(".json")]
    rejected = {k.rsplit("/", 1)[-1].removesuffix(".json") for k in store.list(contract.REJECTED)}
    return ids, rejected


def load(uri, log=print):
    """Every accepted correction in the feedback store at ``uri``. Raises StoreError only
    when the store itself cannot be listed."""
    store = open_store(uri)
    ids, rejected = record_ids(store)
    skipped = {i: "rejected by an operator" for i in ids if i in rejected}
    wanted = [i for i in ids if i not in rejected]

    def read(record_id):
        try:
            return record_id, parse(store.read(contract.record_key(record_id)), record_id)
        except (StoreNotFound, StoreError, ValueError, KeyError, TypeError) as e:
            return record_id, f"{type(e).__name__}: {e}"

    xs, ys, writers, kept = [], [], [], []
    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        for record_id, result in pool.map(read, wanted):
            if isinstance(result, str):
                skipped[record_id] = result
                continue
            x, y, writer = result
            xs.append(x), ys.append(y), writers.append(writer), kept.append(record_id)
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
