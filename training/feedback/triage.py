"""Triage: which corrections, clients and networks look like an attack, most suspicious first.

People who lie to the model send what honest people rarely do, and triage counts it:

- **the same reading→label pair, many times**, from one client or one network (a client
  that says "1 → 7" forty times is teaching the model something; an honest writer corrects
  a handful of digits, each its own way);
- **labels that contradict a confident reading**: the model read it as 1 with
  probability >= CONFIDENT and the label says 7 (needs the record's ``confidence``, the
  model's probability of its reading, when the service stores it);
- **near-duplicate drawings with conflicting labels**: a label that fewer other clients
  give drawings alike (``signature``: the inked cells of a 7x7 grid, at most one cell
  apart) than give them another label. Clients are counted, not records, so a few
  clients cannot outvote many people by sending more;
- **bursts**: more than BURST_FREE records from one client or network within
  BURST_WINDOW_S seconds.

Each count becomes a score through ``excess``: nothing up to what honest use explains,
then log2 of how far past it, so one more record matters less the more there are. A
group's score adds its four; a record's adds its client's (or network's, the larger)
count of its own pair and burst around it, 1 for a confident contradiction and 1 for a
conflicting near-duplicate. SUSPICIOUS (1.0) is the score from which the CLI and the
review page mark one: ten records of one pair, or forty in ten minutes, get there.

Triage is a ranking for a reviewer, not a verdict: it decides nothing and writes nothing.

    from training.feedback import triage
    found = triage.triage(records)   # dicts: id, label, predicted, client_id, network, created_at, pixels
    found.clients[0].key, found.clients[0].score, found.clients[0].reasons
    found.by_id[record_id].reasons
"""
import base64
import bisect
import collections
import dataclasses
import datetime
import math

import numpy as np

from service import contract

PAIR_FREE = 5           # records of one reading→label pair one writer may send before it counts
BURST_WINDOW_S = 600    # a burst is counted within this many seconds
BURST_FREE = 20         # records from one writer within BURST_WINDOW_S before it counts
CONFIDENT = 0.9         # a reading this probable is confident; a label against it is a contradiction
CONTRADICTED_FREE = 3   # confident contradictions from one writer before they count
CONFLICTS_FREE = 2      # conflicting near-duplicates from one writer before they count
SUSPICIOUS = 1.0        # from this score up, a record, client or network is marked suspicious
GRID = 7                # near-duplicates are alike on a GRID x GRID grid of mean ink
INKED = 48              # a grid cell with a mean above this (of 255) is inked


@dataclasses.dataclass
class Suspicion:
    """How suspicious one record, client or network is: ``key`` (the record id, client id or
    network key), ``score`` (0: nothing unusual; SUSPICIOUS and up: look at it), the
    ``reasons`` in words, most telling first, and the ``ids`` of the records it covers."""

    key: str
    score: float
    reasons: list
    ids: list

    @property
    def suspicious(self):
        return self.score >= SUSPICIOUS

    def as_dict(self):
        return {"key": self.key, "score": round(self.score, 2), "records": len(self.ids), "reasons": self.reasons}


@dataclasses.dataclass
class Triage:
    """``records``, ``clients`` and ``networks``, each a list of Suspicion, most suspicious
    first (ties by key); ``by_id`` maps a record id to its Suspicion. Records without a
    client id are in no client, records without a network key in no network."""

    records: list
    clients: list
    networks: list

    @property
    def by_id(self):
        return {s.key: s for s in self.records}


def excess(count, free):
    """0 up to ``free``, then log2(1 + (count - free) / free): 1.0 at twice ``free``."""
    return math.log2(1 + max(0, count - free) / free)


def signature(pixels):
    """The drawing's near-duplicate key: which cells of a GRID x GRID grid hold ink, as the
    bits of an int. Two drawings are near-duplicates when their keys differ in at most one
    bit (``neighbours``)."""
    cell = contract.SIDE // GRID
    grid = np.asarray(pixels, np.float32).reshape(GRID, cell, GRID, cell).mean(axis=(1, 3))
    return int.from_bytes(np.packbits(grid > INKED).tobytes(), "big")


def neighbours(key):
    """``key`` and every key one bit away from it: its near-duplicates' keys."""
    bits = (GRID * GRID + 7) // 8 * 8
    return [key] + [key ^ (1 << (bits - 1 - b)) for b in range(GRID * GRID)]


def _pixels(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = np.frombuffer(base64.b64decode(value), np.uint8)
    return np.asarray(value, np.uint8).reshape(contract.SIDE, contract.SIDE)


def _time(text):
    try:
        return datetime.datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None
    except ValueError:
        return None


def _pair(record):
    return None if record.get("predicted") is None else (record["predicted"], record.get("label"))


def _contradicts(record):
    """The confidence of a reading the label contradicts, if it is confident; else None."""
    confidence = record.get("confidence")
    if (isinstance(confidence, (int, float)) and confidence >= CONFIDENT and record.get("predicted") is not None
            and record["predicted"] != record.get("label")):
        return float(confidence)
    return None


def _conflicts(records):
    """{record id: (the label most other clients gave its near-duplicates, how many clients
    gave it, how many gave the record's own label)} of each record whose label fewer other
    clients back than another label. Clients, not records, are counted: a few clients
    sending many records cannot outvote many people."""
    keys, buckets = {}, collections.defaultdict(list)
    for r in records:
        pixels = _pixels(r.get("pixels"))
        if pixels is not None:
            keys[r["id"]] = signature(pixels)
            buckets[keys[r["id"]]].append(r)
    around = {}  # key -> {label: Counter(client: records)} of it and its neighbours' buckets
    out = {}
    for r in records:
        key = keys.get(r["id"])
        if key is None:
            continue
        if key not in around:
            labels = collections.defaultdict(collections.Counter)
            for k in neighbours(key):
                for other in buckets.get(k, ()):
                    labels[other.get("label")][other.get("client_id") or other["id"]] += 1
            around[key] = labels
        client = r.get("client_id") or r["id"]
        backing = {label: len(clients) - (client in clients) for label, clients in around[key].items()}
        own = backing.get(r.get("label"), 0)
        label, most = max(((k, v) for k, v in backing.items() if k != r.get("label")),
                          key=lambda kv: (kv[1], str(kv[0])), default=(None, 0))
        if most > own:
            out[r["id"]] = (label, most, own)
    return out


class _Group:
    """The records of one client or network, and what triage counts of them."""

    def __init__(self, key, members, conflicts):
        self.key, self.members = key, members
        self.pairs = collections.Counter(p for p in map(_pair, members) if p)
        self.times = sorted(t for t in (_time(r.get("created_at")) for r in members) if t is not None)
        self.burst = max((bisect.bisect_right(self.times, t + BURST_WINDOW_S) - i for i, t in enumerate(self.times)),
                         default=0)
        self.contradicted = sum(_contradicts(r) is not None for r in members)
        self.conflicted = sum(r["id"] in conflicts for r in members)

    def around(self, t):
        """Its records within half a window either side of ``t``."""
        half = BURST_WINDOW_S / 2
        return bisect.bisect_right(self.times, t + half) - bisect.bisect_left(self.times, t - half)

    def suspicion(self, what):
        parts = []
        if self.pairs:
            (predicted, label), n = max(self.pairs.items(), key=lambda item: (item[1], item[0]))
            parts.append((excess(n, PAIR_FREE), f"{n} × {predicted} → {label}"
                          + (" (confirmations)" if predicted == label else "")))
        parts.append((excess(self.burst, BURST_FREE), f"{self.burst} within {BURST_WINDOW_S // 60} min"))
        parts.append((excess(self.contradicted, CONTRADICTED_FREE),
                      f"{self.contradicted} labels against a confident reading"))
        parts.append((excess(self.conflicted, CONFLICTS_FREE),
                      f"{self.conflicted} labels that more other clients contradict on drawings alike"))
        return _suspicion(self.key, parts, [r["id"] for r in self.members], f"{len(self.members)} records from {what}")


def _suspicion(key, parts, ids, context=None):
    counted = sorted((p for p in parts if p[0] > 0), key=lambda p: -p[0])
    reasons = [why for _, why in counted] or ([context] if context else [])
    return Suspicion(key, sum((score for score, _ in counted), 0.0), reasons, ids)


def _groups(records, field, conflicts):
    members = collections.defaultdict(list)
    for r in records:
        if r.get(field):
            members[r[field]].append(r)
    return {key: _Group(key, rs, conflicts) for key, rs in members.items()}


def _ranked(suspicions):
    return sorted(suspicions, key=lambda s: (-s.score, s.key))


def triage(records):
    """Score ``records`` (an iterable of dicts, e.g. Entry.as_triage()): each needs "id" and
    "label", and uses what it has of "predicted", "client_id", "network" (the coarse
    network key), "created_at" (ISO 8601), "pixels" (uint8 [28, 28], or the record's
    base64) and "confidence" (the model's probability of "predicted"). Returns a Triage:
    every record, client and network with its score and reasons, most suspicious first."""
    records = [r for r in records if r.get("id")]
    conflicts = _conflicts(records)
    clients = _groups(records, "client_id", conflicts)
    networks = _groups(records, "network", conflicts)
    scored = []
    for r in records:
        pair, t = _pair(r), _time(r.get("created_at"))
        groups = [(g, what) for g, what in ((clients.get(r.get("client_id")), "client"),
                                            (networks.get(r.get("network")), "network")) if g is not None]
        # Of its client's and its network's count of each kind, the larger.
        pairs = [(excess(g.pairs[pair], PAIR_FREE), f"its {what} sent {g.pairs[pair]} × {pair[0]} → {pair[1]}")
                 for g, what in groups if pair]
        bursts = [(excess(g.around(t), BURST_FREE), f"its {what} sent {g.around(t)} within "
                   f"{BURST_WINDOW_S // 60} min of it") for g, what in groups if t is not None]
        parts = [max(pairs)] if pairs else []
        parts += [max(bursts)] if bursts else []
        confidence = _contradicts(r)
        if confidence is not None:
            parts.append((1.0, f"label {r.get('label')} against a reading of {r['predicted']} at {confidence:.2f}"))
        if r["id"] in conflicts:
            label, most, own = conflicts[r["id"]]
            parts.append((1.0, f"{most} other clients labelled drawings alike {label}, {own} {r.get('label')}"))
        scored.append(_suspicion(r["id"], parts, [r["id"]]))
    return Triage(_ranked(scored), _ranked(g.suspicion("this client") for g in clients.values()),
                  _ranked(g.suspicion("this network") for g in networks.values()))
