"""The review page's queue (training/review/queue.py) over a directory store, in-process.

Records are stored by the service's own POST /feedback (its Flask app, no server). The
queue pages by the last record's place, so deciding a page never makes the next one skip a
record; it reads only the records it has not seen when the store grows; its filters and
sorts are the page's.
"""
import time

import pytest

from review_helpers import send_corrections
from service.store import open_store
from training.feedback import decisions
from training.review.queue import UNSCORED, Query, QueryError, Queue

pytestmark = pytest.mark.slow  # preprocesses dozens of drawings through the service's app


@pytest.fixture
def queue(tmp_path):
    store = tmp_path / "feedback"
    store.mkdir()
    ids = send_corrections(str(store), [{"client_id": "attacker", "label": 7, "predicted": 1, "kind": "one"}] * 12
                           + [{"client_id": f"w{i}", "label": i % 10, "predicted": (i + 1) % 10} for i in range(13)])
    q = Queue(open_store(str(store)), refresh_seconds=0)
    q.refresh(force=True)
    return q, ids


def pages(q, **filters):
    out, cursor = [], None
    while True:
        page = q.page(Query(cursor=cursor, limit=10, **filters))
        out.append([r["id"] for r in page["records"]])
        if not page["next"]:
            return out, page
        cursor = page["next"]


def test_pages_hold_every_record_once_even_when_a_page_is_decided(queue):
    q, ids = queue
    first = q.page(Query(limit=10))
    assert first["total"] == 25 and first["counts"] == {"pending": 25, "approved": 0, "rejected": 0}
    decided = [r["id"] for r in first["records"]]
    assert set(decided) <= set(ids[:12]), "the attacker's records first"
    assert all(r["suspicious"] for r in first["records"])
    q.decide(decided, decisions.REJECTED, "tester", "flagged 1s")
    second = q.page(Query(cursor=first["next"], limit=10))
    rest, _ = pages(q)
    assert [r["id"] for r in second["records"]] == rest[0], "the pending queue after the decided page starts there"
    assert sorted(i for p in rest for i in p) == sorted(set(ids) - set(decided))


def test_filters_sorts_and_bad_queries(queue):
    q, ids = queue
    newest, _ = pages(q, state="all", sort="newest")
    assert [i for p in newest for i in p] == ids[::-1]
    assert [r["client"] for r in q.page(Query(client="attacker", limit=50))["records"]] == ["attacker"] * 12
    assert {r["label"] for r in q.page(Query(label=3, limit=50))["records"]} == {3}
    assert {r["predicted"] for r in q.page(Query(reading=1, limit=50))["records"]} == {1}
    assert q.page(Query(day="1999-01-01"))["total"] == 0
    for args, what in (({"state": "maybe"}, "state"), ({"label": "12"}, "label"), ({"sort": "random"}, "sort"),
                       ({"cursor": "zz"}, "cursor"), ({"limit": "0"}, "limit"), ({"day": "yesterday"}, "day")):
        with pytest.raises(QueryError, match=what):
            Query.parse(args)
    with pytest.raises(QueryError, match="no such record"):
        q.page(Query(cursor="0" * 64))


def test_a_refresh_reads_only_new_records_and_sees_the_clis_decisions(queue):
    q, ids = queue
    store = q.store
    # A record read again would now be unreadable: the queue keeps what it read the first time.
    with open(store.path(f"records/{ids[20]}.json"), "w") as f:
        f.write("not a record")
    new = send_corrections(store.uri, [{"client_id": "late", "label": 2, "predicted": 2}], seed=7)
    decisions.decide(store, ids[:3], decisions.APPROVED, "checked by hand", by="cli")
    q.refresh()
    assert set(q.items) == {*ids, *new} and not q.unreadable
    assert q.counts() == {"pending": 23, "approved": 3, "rejected": 0}
    assert sorted(q.pending_of("client", "attacker")) == sorted(ids[3:12])
    deadline = time.monotonic() + 30  # triage of the grown store runs on a thread of its own
    while q.suspicion(new[0]).reasons == [UNSCORED]:
        assert time.monotonic() < deadline, "triage never saw the new record"
        time.sleep(0.05)
    assert q.page(Query(client="late"))["records"][0]["reasons"] != [UNSCORED]
    assert [h["by"] for h in q.record(ids[0])["history"]] == ["cli"]


def test_an_empty_store_has_an_empty_queue(tmp_path):
    q = Queue(open_store(str(tmp_path)), refresh_seconds=0)
    q.refresh(force=True)
    assert q.page(Query())["records"] == [] and q.suspects() == {"client": [], "network": []}


def test_the_app_answers_503_without_data_while_the_store_is_away(queue):
    import os

    from training.review.app import create_app
    from training.review.auth import LinkAuth

    q, ids = queue
    auth = LinkAuth("tester", 60, 60)
    client = create_app(q, auth).test_client()
    assert client.get(f"/login?token={auth.new_link_token()}").status_code == 303
    assert client.get("/api/records").status_code == 200
    os.rename(q.store.root, q.store.root + ".away")  # an unmounted volume
    r = client.get("/api/records")
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "store_unavailable"
    assert not any(i in r.get_data(as_text=True) for i in ids)
    os.rename(q.store.root + ".away", q.store.root)
    assert client.get("/api/records").status_code == 200
