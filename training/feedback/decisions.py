"""Review states: a correction is pending until a reviewer approves or rejects it.

The one definition of states and decisions, for the review CLI, the review page and the
training loader. A decision is one create-only object in the feedback store,
``decisions/<id>/<UTC stamp>-<approved|rejected>.json`` holding {id, decision, by, at,
reason} (service/contract.py: ``decision_key``). Nothing is ever overwritten or deleted:
a later decision reverses an earlier one by being newer, and every decision stays, so
``history`` shows who decided what, when and why. A ``rejected/<id>.json`` from before
decisions existed counts as a rejection older than any decision.

``states`` needs listings only (decisions/, rejected/, and records/ unless the caller
gives the ids), never a read per record, so it stays cheap for 100,000+ records: on GCS a
listing returns 1,000 keys a round trip.

    from training.feedback import decisions
    current = decisions.states(store)                           # {id: "pending" | "approved" | "rejected"}
    results = decisions.decide(store, ids, "approved", "looked at the sheet", by="ana@example.com",
                               current=current)
    [r for r in results if r.written]                            # what changed
    decisions.history(store, ids[0])                             # every decision on it, oldest first
"""
import concurrent.futures
import dataclasses
import datetime
import json

from service import contract
from service.store import AlreadyExists, StoreError, StoreNotFound
from training.cli import actor, dump
from training.feedback.records import READERS, record_ids

PENDING, APPROVED, REJECTED = "pending", contract.APPROVED_DECISION, contract.REJECTED_DECISION
STATES = (PENDING, APPROVED, REJECTED)
DECISIONS = (APPROVED, REJECTED)
LEGACY_STAMP = ""  # sorts before every decision stamp: a rejected/<id>.json is older than any decision


class UnknownRecords(ValueError):
    """``decide`` was asked about ids that are not records of the store; ``ids`` lists them.
    Nothing was written."""

    def __init__(self, ids, uri):
        self.ids = sorted(ids)
        super().__init__(f"{len(self.ids):,} of the ids are not records in {uri} "
                         f"({', '.join(i[:16] for i in self.ids[:5])}{', ...' if len(self.ids) > 5 else ''})")


def latest(store):
    """{record id: (stamp, decision)} of the newest decision on each decided record, from
    the listings of decisions/ and rejected/ only. A legacy rejection has stamp ""."""
    newest = {}
    for key in store.list(contract.REJECTED):
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".json"):
            newest[name.removesuffix(".json")] = (LEGACY_STAMP, REJECTED)
    for key in store.list(contract.DECISIONS):
        parsed = contract.parse_decision_key(key)
        if parsed:
            record_id, stamp, decision = parsed
            if record_id not in newest or stamp >= newest[record_id][0]:
                newest[record_id] = (stamp, decision)
    return newest


def states(store, ids=None):
    """{record id: PENDING, APPROVED or REJECTED} for every record of ``store`` (or for
    ``ids``, when the caller has listed them), from listings only. Decisions on ids that are
    not records are left out."""
    ids = record_ids(store) if ids is None else ids
    newest = latest(store)
    return {i: newest[i][1] if i in newest else PENDING for i in ids}


@dataclasses.dataclass
class Result:
    """What ``decide`` did with one record: its state ``before`` and ``after``, and whether a
    decision object was ``written`` (False: the state already was the decision)."""

    id: str
    before: str
    after: str
    written: bool
    key: str | None = None


def decide(store, ids, decision, reason, by=None, current=None):
    """Decide ``decision`` (APPROVED or REJECTED) on every record of ``ids``, for ``reason``,
    as ``by`` (default: training.cli.actor(), env DIGITDRAW_ACTOR else user@host).

    Returns one Result per id, in order. A record already in that state gets no new object
    (idempotent: ``written`` False); any other gets one create-only decision object, so a
    decision on a rejected record reverses it. ``current`` is ``states(store)`` when the
    caller has it (it is listed otherwise). Raises ValueError for a decision that is not
    one or a blank reason, and UnknownRecords for ids that are not records of the store;
    then nothing is written. Store errors (StoreUnreachable, ...) propagate; the decisions
    written before one stay written, and deciding again finishes the rest.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("a decision needs a reason: say why, for whoever looks later")
    ids = list(dict.fromkeys(ids))
    current = states(store) if current is None else current
    unknown = [i for i in ids if i not in current]
    if unknown:
        raise UnknownRecords(unknown, store.uri)
    by = by or actor()

    def one(record_id):
        before = current[record_id]
        if before == decision:
            return Result(record_id, before, before, False)
        for _ in range(3):  # two decisions in one microsecond: take the next one
            at = datetime.datetime.now(datetime.timezone.utc)
            key = contract.decision_key(record_id, at, decision)
            entry = {"id": record_id, "decision": decision, "by": by, "at": f"{at:%Y-%m-%dT%H:%M:%S.%fZ}",
                     "reason": reason.strip()}
            try:
                store.create(key, dump(entry))
                return Result(record_id, before, decision, True, key)
            except AlreadyExists:
                continue
        raise StoreError(f"{store.uri}: could not write a decision on {record_id}: its keys kept existing")

    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        return list(pool.map(one, ids))


def history(store, record_id):
    """Every decision on ``record_id``, oldest first: dicts {id, decision, by, at, reason,
    key}; the legacy rejection first if there is one. An object that cannot be read or
    parsed still shows its decision and time, from its key, with "unreadable" saying why."""
    keys = [(LEGACY_STAMP, REJECTED, contract.rejected_key(record_id))] if store.exists(
        contract.rejected_key(record_id)) else []
    for key in store.list(f"{contract.DECISIONS}/{record_id}"):
        parsed = contract.parse_decision_key(key)
        if parsed and parsed[0] == record_id:
            keys.append((parsed[1], parsed[2], key))
    out = []
    for stamp, decision, key in sorted(keys):
        entry = {"id": record_id, "decision": decision, "by": None, "at": _at(stamp), "reason": None, "key": key}
        try:
            stored = json.loads(store.read(key))
            if not isinstance(stored, dict):
                raise ValueError(f"a JSON {type(stored).__name__}, not an object")
            entry.update({name: stored.get(name) for name in ("by", "at", "reason")})
        except (StoreNotFound, ValueError) as e:
            entry["unreadable"] = f"{type(e).__name__}: {e}"
        out.append(entry)
    return out


def _at(stamp):
    """A decision key's stamp as the "at" its object holds; None for a legacy rejection's."""
    if not stamp:
        return None
    return f"{datetime.datetime.strptime(stamp, contract.DECISION_STAMP):%Y-%m-%dT%H:%M:%S.%f}Z"


def describe(entry):
    """One decision as "approved by WHO at WHEN: WHY"."""
    return (f"{entry['decision']} by {entry.get('by') or '?'} at {entry.get('at') or '?'}: {entry.get('reason') or '-'}"
            + (f" (unreadable: {entry['unreadable']})" if entry.get("unreadable") else ""))
