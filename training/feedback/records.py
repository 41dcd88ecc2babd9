"""Reading the records of a feedback store (service/contract.py has the layout).

``index(store)`` lists the store: every record id and the first day each was sent, from
the records/ and days/ listings, without reading a record. ``read(store, ids)`` reads
records READERS at a time. ``check`` says whether a record's bytes are a record the
service could have written; ``entries`` reads a store's records newest first, a day at a
time, as the review CLI shows them.
"""
import base64
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import re

import numpy as np

from service import contract
from service.store import StoreError, StoreUnreachable

READERS = 16         # records read at once: a GCS read is a round trip of tens of ms
DAY = re.compile(r"\d{4}-\d\d-\d\d")
ID = re.compile(r"[0-9a-f]{64}")


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
    for name in ("client_id", "network", "created_at"):
        if record.get(name) is not None and not isinstance(record[name], str):
            raise ValueError(f"{name} {record[name]!r} is not a string")
    return record, pixels.reshape(contract.SIDE, contract.SIDE)


def writer(record, record_id):
    """Who wrote a record: its client id; a record without one is a writer of its own."""
    return record.get("client_id") or f"record:{record_id}"


@dataclasses.dataclass
class Index:
    """A feedback store's records from its listings: ``ids``, sorted, and ``first_day``
    {id: "YYYY-MM-DD"}, the first day each was sent (absent for a record the service
    stored without its marker)."""

    ids: list
    first_day: dict

    def by_day(self):
        """{day: [ids]} newest day first, the ids sorted; the records without a day last, under None."""
        days = collections.defaultdict(list)
        for record_id in self.ids:
            days[self.first_day.get(record_id)].append(record_id)
        order = sorted((d for d in days if d), reverse=True) + ([None] if None in days else [])
        return {day: days[day] for day in order}


def record_ids(store):
    """The id of every record in ``store``, sorted, from one listing."""
    names = (k.rsplit("/", 1)[-1] for k in store.list(contract.RECORDS) if k.endswith(".json"))
    return sorted(n.removesuffix(".json") for n in names)


def index(store):
    """The store's Index, from the listings of records/ and days/; no record is read. The
    same drawing sent again on a later day gets that day's marker too; the record counts
    on its first."""
    ids = record_ids(store)
    known, first = set(ids), {}
    for key in store.list(contract.DAYS):
        parts = key.split("/")
        if len(parts) == 3 and DAY.fullmatch(parts[1]) and parts[2] in known:
            first[parts[2]] = min(first.get(parts[2], parts[1]), parts[1])
    return Index(ids, first)


def read(store, ids, how=check):
    """(id, ``how(its bytes, id)``) for each record of ``ids``, in order, READERS at a time;
    in place of the result, why it could not be read or used (a string). A store that
    cannot be reached at all raises StoreUnreachable from the first read that finds it so."""
    def one(record_id):
        try:
            return record_id, how(store.read(contract.record_key(record_id)), record_id)
        except StoreUnreachable:
            raise
        except (StoreError, ValueError, KeyError, TypeError) as e:
            return record_id, f"{type(e).__name__}: {e}"

    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        yield from pool.map(one, ids)


@dataclasses.dataclass
class Entry:
    """One record as read: the record (a dict without its pixels) and its ``pixels`` when it
    is readable, else ``problem``, why not; ``day`` is the day it was sent (None: unknown)."""

    id: str
    day: str | None
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

    def as_triage(self):
        """The record as triage.triage takes it."""
        return {**(self.record or {}), "id": self.id, "pixels": self.pixels}


def _entry(record_id, result, first):
    if isinstance(result, str):
        return Entry(record_id, first.get(record_id), problem=result)
    record, pixels = result
    created = record.get("created_at")
    day = first.get(record_id) or (created[:10] if isinstance(created, str) and DAY.match(created) else None)
    return Entry(record_id, day, {k: v for k, v in record.items() if k != "pixels"}, pixels)


def _newest_first(entry):
    created = entry.get("created_at")
    return created if isinstance(created, str) else "", entry.id


def entries(store, found=None, keep_day=None, log=None, every=1000):
    """Every record of ``store`` (its Index ``found``, listed if None) as an Entry, newest
    first (by day, then created_at; the unreadable last in their day), of the days
    ``keep_day`` accepts: a predicate on "YYYY-MM-DD", or None for a day unknown. The
    records are read a day at a time, when the caller gets there, so one that stops early
    reads few. ``log`` gets a progress line every ``every`` records."""
    found = found or index(store)
    keep = keep_day or (lambda day: True)
    by_day = found.by_day()
    unmarked = by_day.pop(None, [])  # the service stopped between record and marker
    total = len(unmarked) + sum(len(v) for day, v in by_day.items() if keep(day))
    done = 0

    def batch(ids):
        nonlocal done
        for record_id, result in read(store, ids):
            done += 1
            if log and total > every and done % every == 0:
                log(f"{store.uri}: read {done:,} of {total:,} records")
            yield _entry(record_id, result, found.first_day)

    found_late = collections.defaultdict(list)  # a record without a marker has its day in created_at
    for entry in batch(unmarked):
        found_late[entry.day].append(entry)
    days = sorted({*by_day, *found_late} - {None}, reverse=True) + [None]
    for day in days:
        if keep(day):
            got = found_late.get(day, []) + list(batch(by_day.get(day, [])))
            yield from sorted(got, key=_newest_first, reverse=True)
