"""What a retraining reads from a feedback store: trusted, bounded, fair, and split by writer.

``load`` picks the corrections a run trains on:

1. **Trust.** ``approved`` (the default) takes only records a reviewer approved; ``all``
   takes every record not rejected, for a store whose only writer you trust (your own
   local page). Review states come from listings (training/feedback/decisions.py).
2. **Newest first, bounded.** Candidates are read a day at a time, newest day first (the
   days/ markers); within a day in an order set by a keyed hash of the id, which nobody
   who sends records can predict or choose. Reading stops at ``limit`` training records,
   or after READ_FACTOR x ``limit`` reads; what was not read is counted and named by day
   in the log, for later runs. So a run reads a bounded number of records, whatever the
   backlog; only the listings grow with it.
3. **Fair.** No client, and no network (the record's coarse network key), gives more than
   ``share`` x ``limit`` of them; the rest of theirs is counted and the clients named.
4. **Split by writer.** A fixed share of the writers (HOLDOUT_SHARE, by a keyed hash of
   the client id, with the secret the model store keeps: training/evalset.py) never
   trains: their approved corrections are the candidates of the real-drawings evaluation
   set, whatever the trust. A writer's side never changes between runs, and no client can
   choose it: it cannot compute the hash without the secret.

A record that is not readable, not well formed or not a drawing is skipped, counted and
named in the log; it never stops a run.
"""
import collections
import dataclasses
import hashlib
import hmac

import numpy as np

from service import contract
from training.feedback import decisions, records

TRUST = ("approved", "all")
MAX_CORRECTIONS = 10_000  # read for one retraining at most (--feedback-max)
MAX_SHARE = 0.05          # of MAX_CORRECTIONS, the most one client or network gives (--feedback-share)
HOLDOUT_SHARE = 0.2       # of writers, held out as the real-drawings evaluation set
READ_FACTOR = 2           # records read at most, as a multiple of the limit
BATCH = 256               # records read between two checks of the limit
NAMED = 10                # clients, networks or days named in one log line at most


@dataclasses.dataclass
class Corrections:
    """uint8 digits [N, 28, 28] as the model saw them, their labels [N], and for each its
    record id, writer (client id, or "record:<id>") and network key (None if absent)."""

    x: np.ndarray
    y: np.ndarray
    ids: list
    writers: list
    networks: list

    def __len__(self):
        return len(self.y)

    @classmethod
    def of(cls, rows):
        """From (pixels, label, id, writer, network) rows."""
        if not rows:
            return cls(np.zeros((0, contract.SIDE, contract.SIDE), np.uint8), np.zeros(0, np.uint8), [], [], [])
        x, y, ids, writers, networks = zip(*rows)
        return cls(np.stack(x), np.asarray(y, np.uint8), list(ids), list(writers), list(networks))


@dataclasses.dataclass
class Loaded:
    """What ``load`` found: ``train`` (the corrections to train on), ``held`` (approved
    corrections of held-out writers: the evaluation set's candidates), ``states`` ({id:
    state} of every record), ``skipped`` ({id: why} of the records read and not used for
    being unreadable or not drawings) and ``counts`` (the numbers the log gives)."""

    train: Corrections
    held: Corrections
    states: dict
    skipped: dict
    counts: dict


def keyed(secret, text):
    """A keyed hash of ``text`` as an int in [0, 2**64): unpredictable without ``secret``."""
    return int.from_bytes(hmac.new(secret, text.encode(), hashlib.sha256).digest()[:8], "big")


def held_out(writer, secret, share=HOLDOUT_SHARE):
    """Whether ``writer``'s corrections belong to the real-drawings evaluation set: a keyed
    hash of the writer, so every run splits them alike, and no writer can choose its side."""
    return keyed(secret, f"holdout:{writer}") < share * 2 ** 64


def not_a_drawing(record, pixels):
    """Why a record is not a drawing, or None: the service's own rule (service/contract.py),
    which POST /feedback answers with a 422, applied to records stored before it or written
    to the store by other hands."""
    return contract.not_a_drawing(pixels, record.get("strokes"))


def _trusted(state, trust):
    return state == decisions.APPROVED or (trust == "all" and state == decisions.PENDING)


def _names(pairs, unit):
    """"a (12), b (7), ... and N more <unit>" of the first NAMED (name, count) pairs."""
    pairs = list(pairs)
    more = len(pairs) - NAMED
    return ", ".join(f"{k} ({n:,})" for k, n in pairs[:NAMED]) + (f" and {more:,} more {unit}" if more > 0 else "")


def load(store, secret, trust="approved", limit=MAX_CORRECTIONS, share=MAX_SHARE, log=print,
         holdout_share=HOLDOUT_SHARE):
    """The corrections a retraining uses from the feedback ``store`` (a store client), as a
    Loaded. ``secret`` (bytes) keys the hashes that split writers and order a day's
    records. Raises ValueError for a trust that is not one of TRUST or a limit below 1,
    and StoreError only when the store cannot be listed or reached."""
    if trust not in TRUST:
        raise ValueError(f"feedback trust {trust!r} is not one of {', '.join(TRUST)}")
    if limit < 1 or not 0 < share <= 1:
        raise ValueError(f"feedback limit {limit} must be >= 1 and share {share} in (0, 1]")
    found = records.index(store)
    states = decisions.states(store, found.ids)
    by_state = collections.Counter(states.values())
    candidates = {}  # day -> ids, newest day first, each day in keyed order
    for day, ids in found.by_day().items():
        chosen = [i for i in ids if _trusted(states[i], trust)]
        if chosen:
            candidates[day] = sorted(chosen, key=lambda i: keyed(secret, f"order:{i}"))
    total = sum(map(len, candidates.values()))
    log(f"feedback: {store.uri}: {len(found.ids):,} records: {by_state[decisions.APPROVED]:,} approved, "
        f"{by_state[decisions.PENDING]:,} pending, {by_state[decisions.REJECTED]:,} rejected; trusting "
        + ("the approved ones" if trust == "approved" else "every one not rejected (--feedback-trust all)")
        + f": {total:,}")

    cap = max(1, int(share * limit))
    train, held, skipped = [], [], {}
    per_client, per_network = collections.Counter(), collections.Counter()
    over_share, read_count, unread = collections.Counter(), 0, collections.Counter()
    queue = [(day, i) for day, ids in candidates.items() for i in ids]
    position = 0
    while position < len(queue) and len(train) < limit and read_count < READ_FACTOR * limit:
        batch = queue[position:position + min(BATCH, READ_FACTOR * limit - read_count)]
        position += len(batch)
        for (day, _), (record_id, result) in zip(batch, records.read(store, [i for _, i in batch])):
            if len(train) >= limit:  # the rest of the last batch: read, but left for later runs
                unread[day or "no day"] += 1
                continue
            read_count += 1
            if isinstance(result, str):
                skipped[record_id] = result
                continue
            record, pixels = result
            problem = not_a_drawing(record, pixels)
            if problem:
                skipped[record_id] = f"not a drawing: {problem}"
                continue
            writer, client, network = records.writer(record, record_id), record.get("client_id"), record.get("network")
            row = (pixels, record["label"], record_id, writer, network)
            if held_out(writer, secret, holdout_share):
                if states[record_id] == decisions.APPROVED:
                    held.append(row)
                continue
            if client and per_client[client] >= cap:
                over_share[f"client {client}"] += 1
            elif network and per_network[network] >= cap:
                over_share[f"network {network}"] += 1
            else:
                per_client[client] += bool(client)
                per_network[network] += bool(network)
                train.append(row)
    for day, record_id in queue[position:]:
        unread[day or "no day"] += 1

    counts = {"records": len(found.ids), **{s: by_state[s] for s in decisions.STATES}, "trusted": total,
              "read": read_count, "used": len(train), "held_out": len(held), "skipped": len(skipped),
              "over_share": sum(over_share.values()), "left": sum(unread.values()), "limit": limit, "cap": cap}
    loaded = Loaded(Corrections.of(train), Corrections.of(held), states, skipped, counts)
    log(f"feedback: read {read_count:,}, newest first: training on {len(train):,} from "
        f"{len(set(loaded.train.writers)):,} writers; {len(held):,} approved from {len(set(loaded.held.writers)):,} "
        f"held-out writers for the evaluation set; skipped {len(skipped):,} (unreadable or not drawings)")
    for record_id, why in sorted(skipped.items()):
        log(f"feedback: skipped {record_id}: {why}")
    if over_share:
        log(f"feedback: {counts['over_share']:,} left out over the share of one client or network "
            f"(at most {cap:,} each, --feedback-share {share} of --feedback-max {limit:,}): "
            f"{_names(over_share.most_common(), 'clients and networks')}")
    if unread:
        days = sorted((d for d in unread if d != "no day"), reverse=True) + (["no day"] if "no day" in unread else [])
        log(f"feedback: {counts['left']:,} trusted corrections left for later runs (over --feedback-max {limit:,}), by "
            f"day, newest first: {_names(((d, unread[d]) for d in days), 'days')}")
    return loaded
