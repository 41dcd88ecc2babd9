"""The review queue: every record of a feedback store, in memory, filtered, sorted and paged.

The queue lists the store's records and reads each one once: a refresh (at most every
``refresh_seconds``, when a request comes) lists again and reads only the records it has not
seen. The states come from the decisions module's listing and the suspicion scores from the
triage module, the same code the review CLI and the training loader use; a decision made
here goes through that same module (create-only markers) and updates the queue at once.

A page is ``limit`` records of those a Query lets through, in its order, after its cursor:
the id of the last record of the previous page. Paging by the last record's place in the
order (not by an offset) means that deciding records on one page, which takes them out of a
"pending" queue, never makes the next page skip any.
"""
import base64
import bisect
import dataclasses
import datetime
import re
import threading
import time

import numpy as np

from service import contract
from training.feedback import decisions, records, triage

PAGE_LIMIT, MAX_LIMIT = 48, 200
SUSPECTS = 10         # clients and networks /api/suspects lists, of each kind
UNSCORED = "not triaged yet"  # the reason of a record that arrived since triage last ran
STATES = ("all", *decisions.STATES)     # the first is no filter
SORTS = ("suspicion", "newest", "oldest", "label", "reading", "client")
KINDS = ("client", "network")
RECORD_ID, DAY = records.ID, records.DAY


class QueryError(ValueError):
    """A query the queue cannot answer: a bad filter, sort or cursor (400)."""

    status, code = 400, "bad_request"


@dataclasses.dataclass
class Item:
    """One readable record as the queue holds it."""

    id: str
    label: int
    predicted: int | None
    client: str | None
    network: str | None
    created_at: str
    stamp: float        # created_at in seconds since the epoch; 0 if it has none
    day: str | None
    model_version: str | None
    confidence: float | None  # the model's probability of its reading, when the service stored it
    pixels: bytes


@dataclasses.dataclass(frozen=True)
class Query:
    state: str = decisions.PENDING
    day: str | None = None
    label: int | None = None
    reading: int | None = None
    client: str | None = None
    network: str | None = None
    sort: str = "suspicion"
    cursor: str | None = None
    limit: int = PAGE_LIMIT

    @classmethod
    def parse(cls, args):
        """A Query from a request's arguments; QueryError names what is wrong."""
        def digit(name):
            text = args.get(name, "")
            if text == "":
                return None
            if not (text.isdigit() and int(text) < contract.CLASSES):
                raise QueryError(f"{name}={text[:20]!r}: give a digit 0-9, or nothing for any")
            return int(text)

        state, sort = args.get("state") or decisions.PENDING, args.get("sort") or "suspicion"
        if state not in STATES:
            raise QueryError(f"state={state[:20]!r}: use one of {', '.join(STATES)}")
        if sort not in SORTS:
            raise QueryError(f"sort={sort[:20]!r}: use one of {', '.join(SORTS)}")
        day = args.get("day") or None
        if day is not None and not DAY.fullmatch(day):
            raise QueryError(f"day={day[:20]!r}: give a day YYYY-MM-DD")
        cursor = args.get("cursor") or None
        if cursor is not None and not RECORD_ID.fullmatch(cursor):
            raise QueryError("cursor: give the id of the last record of the previous page")
        limit = args.get("limit") or str(PAGE_LIMIT)
        if not (limit.isdigit() and 1 <= int(limit) <= MAX_LIMIT):
            raise QueryError(f"limit={limit[:20]!r}: give a whole number from 1 to {MAX_LIMIT}")
        return cls(state, day, digit("label"), digit("reading"), args.get("client") or None,
                   args.get("network") or None, sort, cursor, int(limit))

    def keeps(self, item, state):
        return ((self.state == "all" or state == self.state) and (self.day is None or item.day == self.day)
                and (self.label is None or item.label == self.label)
                and (self.reading is None or item.predicted == self.reading)
                and (self.client is None or item.client == self.client)
                and (self.network is None or item.network == self.network))


def _stamp(created):
    try:
        return datetime.datetime.fromisoformat(created).timestamp()
    except ValueError:
        return 0.0


def _item(record_id, record, pixels):
    created = record.get("created_at") if isinstance(record.get("created_at"), str) else ""
    return Item(record_id, record["label"], record.get("predicted"), record.get("client_id"),
                record.get("network") if isinstance(record.get("network"), str) else None, created, _stamp(created),
                created[:10] if DAY.match(created) else None,
                record.get("model_version") if isinstance(record.get("model_version"), str) else None,
                record.get("confidence") if isinstance(record.get("confidence"), (int, float)) else None,
                pixels.tobytes())


class Queue:
    """The records of ``store``, their states and their suspicion, kept fresh by ``refresh``.

    Triage scores every record against all the others, which takes seconds for a large
    store, so after the first time it runs on a thread of its own when new records arrive:
    pages are answered meanwhile, the new records with no score yet (UNSCORED)."""

    def __init__(self, store, refresh_seconds=10, clock=time.monotonic):
        self.store, self.refresh_seconds, self.clock = store, refresh_seconds, clock
        self.items, self.unreadable = {}, {}   # id -> Item; id -> why it could not be read
        self.states = {}                       # id -> state (decisions.STATES) of every record in items
        self.found = None                      # triage.Triage of the records in items when it last ran
        self.by_id = {}                        # id -> its triage.Suspicion
        self.refreshed = None
        self._orders = {}                      # (version, query without cursor and limit) -> [(key, id)]
        self.version = 0
        self._triaged = 0                      # how many records triage last saw
        self._triaging = False
        self._lock = threading.RLock()

    # -- keeping up with the store ---------------------------------------------------------

    def refresh(self, force=False):
        """List the store and read the records not seen yet, if the queue is older than
        ``refresh_seconds`` (or ``force``); triage them (the first time before it returns,
        later on a thread). StoreError if the store cannot be listed."""
        with self._lock:
            now = self.clock()
            if not force and self.refreshed is not None and now - self.refreshed < self.refresh_seconds:
                return
            ids = records.record_ids(self.store)
            new = [i for i in ids if i not in self.items and i not in self.unreadable]
            for record_id, result in records.read(self.store, new):
                if isinstance(result, str):
                    self.unreadable[record_id] = result
                else:
                    self.items[record_id] = _item(record_id, *result)
            states = decisions.states(self.store, list(self.items))
            if new or states != self.states:
                self.states = states
                self._changed()
            self.refreshed = now
            start = (self.found is None or len(self.items) != self._triaged) and not self._triaging
            if start:
                self._triaging = True
                snapshot = list(self._for_triage())
        if start and self.found is None:
            self._triage(snapshot)
        elif start:
            threading.Thread(target=self._triage, args=(snapshot,), name="review-triage", daemon=True).start()

    def _triage(self, snapshot):
        try:
            found = triage.triage(snapshot)  # outside the lock: pages do not wait for it
        except BaseException:
            with self._lock:
                self._triaging = False
            raise
        with self._lock:
            self.found, self.by_id, self._triaged, self._triaging = found, found.by_id, len(snapshot), False
            self._changed()

    def _changed(self):
        self.version += 1
        self._orders.clear()

    def _for_triage(self):
        for item in self.items.values():
            yield {"id": item.id, "label": item.label, "predicted": item.predicted, "client_id": item.client,
                   "network": item.network, "created_at": item.created_at, "confidence": item.confidence,
                   "pixels": np.frombuffer(item.pixels, np.uint8)}

    def suspicion(self, record_id):
        """The record's triage.Suspicion; UNSCORED until triage has seen it."""
        return self.by_id.get(record_id) or triage.Suspicion(record_id, 0.0, [UNSCORED], [record_id])

    def state(self, record_id):
        return self.states.get(record_id, decisions.PENDING)

    # -- reading it -----------------------------------------------------------------------

    def _key(self, query, item):
        score = self.suspicion(item.id).score
        return {"suspicion": (-score, -item.stamp), "newest": (-item.stamp,), "oldest": (item.stamp,),
                "label": (item.label, -score), "reading": (-1 if item.predicted is None else item.predicted, -score),
                "client": (item.client or "", -item.stamp)}[query.sort] + (item.id,)

    def _order(self, query):
        whole = dataclasses.replace(query, cursor=None, limit=PAGE_LIMIT)
        cached = self._orders.get((self.version, whole))
        if cached is None:
            cached = sorted((self._key(query, item), item.id) for item in self.items.values()
                            if query.keeps(item, self.state(item.id)))
            self._orders[(self.version, whole)] = cached
        return cached

    def page(self, query):
        """One page of the queue for ``query``: its records (pixels as base64), the cursor of the
        next page (None on the last), how many records the query lets through, and the counts
        of every state and the days there are records of, for the filters."""
        self.refresh()
        with self._lock:
            order = self._order(query)
            start = 0
            if query.cursor:
                last = self.items.get(query.cursor)
                if last is None:
                    raise QueryError("cursor: no such record in the queue; start from the first page")
                start = bisect.bisect_right(order, (self._key(query, last), last.id))
            chosen = order[start:start + query.limit]
            more = start + query.limit < len(order)
            return {"records": [self.view(self.items[i]) for _, i in chosen],
                    "next": chosen[-1][1] if more and chosen else None, "total": len(order),
                    "counts": self.counts(), "unreadable": len(self.unreadable),
                    "days": sorted({i.day for i in self.items.values() if i.day}, reverse=True)}

    def counts(self):
        """How many records are in each state."""
        counts = {s: 0 for s in decisions.STATES}
        for record_id in self.items:
            counts[self.state(record_id)] += 1
        return counts

    def view(self, item):
        """A record as the page shows it."""
        score = self.suspicion(item.id)
        return {"id": item.id, "label": item.label, "predicted": item.predicted, "client": item.client,
                "network": item.network, "created_at": item.created_at or None, "day": item.day,
                "model_version": item.model_version, "state": self.state(item.id),
                "score": round(score.score, 2), "reasons": score.reasons, "suspicious": score.suspicious,
                "pixels": base64.b64encode(item.pixels).decode()}

    def record(self, record_id):
        """One record and its decision history, oldest first; None if the queue has no such record."""
        self.refresh()
        with self._lock:
            item = self.items.get(record_id)
            if item is None:
                return None
            found = self.view(item)
        return {**found, "history": decisions.history(self.store, record_id)}

    def suspects(self):
        """The most suspicious clients and networks (of those triage finds anything unusual in),
        most suspicious first, with their reasons and how many of their records are still pending."""
        self.refresh()
        with self._lock:
            ranked = {"client": self.found.clients, "network": self.found.networks}
            return {kind: [{**s.as_dict(), "suspicious": s.suspicious,
                            "pending": sum(self.state(i) == decisions.PENDING for i in s.ids)}
                           for s in ranked[kind][:SUSPECTS] if s.score > 0] for kind in KINDS}

    def _ids_of(self, kind, key):
        field = "client" if kind == "client" else "network"
        return [i.id for i in self.items.values() if getattr(i, field) == key]

    def pending_of(self, kind, key):
        """The ids of every pending record of client or network ``key``."""
        self.refresh()
        with self._lock:
            return [i for i in self._ids_of(kind, key) if self.state(i) == decisions.PENDING]

    # -- deciding -------------------------------------------------------------------------

    def decide(self, ids, state, by, reason):
        """Decide ``state`` on each of ``ids`` as ``by`` for ``reason``, through the decisions
        module (which writes only where the state changes). Returns {"decided": [{id, state}],
        "unchanged": [ids already in that state], "missing": [ids the queue does not hold],
        "counts": the records in each state after}."""
        self.refresh()
        with self._lock:
            missing = [i for i in ids if i not in self.items]
            known = [i for i in ids if i in self.items]
            current = dict(self.states)
        results = decisions.decide(self.store, known, state, reason, by=by, current=current)
        with self._lock:
            for r in results:
                self.states[r.id] = r.after
            self._changed()
            counts = self.counts()
        return {"decided": [{"id": r.id, "state": r.after} for r in results if r.written],
                "unchanged": [r.id for r in results if not r.written], "missing": missing, "counts": counts}
