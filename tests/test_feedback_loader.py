"""What a retraining reads from a feedback store (training/feedback/loader.py), and the frozen
real-drawings evaluation set it grades with (training/evalset.py).

Records are created in a real store (a directory, and gs:// on fake-gcs-server) exactly as
POST /feedback stores them, decided through training/feedback/decisions.py, and read back by
the loader as `python -m training` does.
"""
import numpy as np
import pytest

from service import contract
from service.store import open_store
from test_feedback_review import days_ago, digit, make_record, put
from training import evalset
from training.feedback import decisions, loader

SECRET = b"a test secret"


def approve(uri, ids):
    decisions.decide(open_store(uri), ids, decisions.APPROVED, "looked at them", by="a test")


def reject(uri, ids):
    decisions.decide(open_store(uri), ids, decisions.REJECTED, "junk", by="a test")


def load(uri, log=None, **kw):
    return loader.load(open_store(uri), SECRET, log=log or (lambda line: None), **{"holdout_share": 0, **kw})


def test_trust_approved_by_default_and_all_as_an_opt_in(store_uri):
    recs = [put(store_uri, make_record(*digit(i), predicted=0, client_id=f"pen-{i}")) for i in range(6)]
    approve(store_uri, [r["id"] for r in recs[:3]])
    reject(store_uri, [recs[3]["id"]])
    # A rejection in the layout before decisions counts as one; a later approval reverses it.
    open_store(store_uri).create(contract.rejected_key(recs[4]["id"]), b'{"reason": "old"}')
    assert sorted(load(store_uri).train.ids) == sorted(r["id"] for r in recs[:3])
    assert sorted(load(store_uri, trust="all").train.ids) == sorted(r["id"] for r in recs[:3] + recs[5:])
    approve(store_uri, [recs[4]["id"]])
    assert sorted(load(store_uri).train.ids) == sorted(r["id"] for r in recs[:5] if r is not recs[3])
    found = load(store_uri)
    assert found.counts["approved"] == 4 and found.counts["pending"] == 1 and found.counts["rejected"] == 1
    assert len(found.train) == 4 and found.train.x.shape == (4, 28, 28)
    with pytest.raises(ValueError, match="is not one of approved, all"):
        load(store_uri, trust="everyone")


def test_a_run_reads_at_most_the_limit_newest_first_and_names_the_rest(store_uri):
    by_day = {n: [put(store_uri, make_record(*digit(10 * n + k), predicted=1, client_id=f"pen-{n}-{k}",
                                             at=days_ago(n, second=k))) for k in range(4)] for n in range(3)}
    approve(store_uri, [r["id"] for rs in by_day.values() for r in rs])
    lines = []
    found = load(store_uri, lines.append, limit=6)
    today, yesterday, older = (days_ago(n).date().isoformat() for n in range(3))
    chosen = set(found.train.ids)
    # Today's four, then two of yesterday's (in the keyed order nobody can choose), nothing older.
    assert len(chosen) == 6 and {r["id"] for r in by_day[0]} <= chosen and not {r["id"] for r in by_day[2]} & chosen
    assert found.counts["left"] == 6 and found.counts["read"] <= 2 * 6
    assert lines[-1] == (f"feedback: 6 trusted corrections left for later runs (over --feedback-max 6), by day, "
                         f"newest first: {yesterday} (2), {older} (4)")
    assert sorted(load(store_uri, limit=6).train.ids) == sorted(chosen)  # every run picks alike


def test_no_client_or_network_gives_more_than_its_share(store_uri):
    flood = [put(store_uri, make_record(*digit(k), predicted=1, client_id="flood", at=days_ago(0, second=k)))
             for k in range(8)]
    neighbours = [put(store_uri, make_record(*digit(20 + k), predicted=1, client_id=f"nat-{k}", network="v4:ab",
                                             at=days_ago(0, second=20 + k))) for k in range(5)]
    people = [put(store_uri, make_record(*digit(40 + k), predicted=1, client_id=f"pen-{k}", network=f"v4:{k:02x}"))
              for k in range(3)]
    approve(store_uri, [r["id"] for r in flood + neighbours + people])
    lines = []
    found = load(store_uri, lines.append, limit=20, share=0.15)  # at most 3 each
    assert found.counts["cap"] == 3
    clients = [i for i, w in zip(found.train.ids, found.train.writers) if w == "flood"]
    assert len(clients) == 3 and sum(n == "v4:ab" for n in found.train.networks) == 3
    assert set(found.train.ids) >= {r["id"] for r in people}
    assert len(found.train) == 9 and found.counts["over_share"] == 7
    assert lines[-1] == ("feedback: 7 left out over the share of one client or network (at most 3 each, "
                         "--feedback-share 0.15 of --feedback-max 20): client flood (5), network v4:ab (2)")


def test_what_is_not_a_drawing_never_trains_even_when_approved(store_uri):
    """Records the service would now refuse (a dot, noise, a dot's strokes), stored before it
    did or by other hands, and approved by mistake: skipped and named, never trained on."""
    noise = (np.random.default_rng(0).random((28, 28)) < 0.5).astype(np.uint8) * 255
    dot = np.zeros((28, 28), np.uint8)
    dot[13:15, 13:15] = 255
    seven, label = digit(0)
    good = put(store_uri, make_record(seven, label, predicted=1, client_id="pen-0"))
    bad = [put(store_uri, make_record(noise, 7, predicted=1, client_id="noise")),
           put(store_uri, make_record(dot, 1, predicted=1, client_id="dot")),
           put(store_uri, make_record(digit(1)[0], 7, predicted=1, client_id="dot-strokes",
                                      strokes=[[[0.5, 0.5], [0.51, 0.5]]]))]
    approve(store_uri, [r["id"] for r in [good] + bad])
    lines = []
    found = load(store_uri, lines.append)
    assert found.train.ids == [good["id"]]
    assert sorted(found.skipped) == sorted(r["id"] for r in bad)
    assert all(why.startswith("not a drawing: ") for why in found.skipped.values())
    assert "skipped 3 (unreadable or not drawings)" in "\n".join(lines)


def test_held_out_writers_never_train_and_only_their_approved_corrections_grade(store_uri):
    writers = [f"pen-{w}" for w in range(10)]
    held = {w for w in writers if loader.held_out(w, SECRET)}
    assert 0 < len(held) < len(writers)  # the secret holds out some, not all
    recs = [put(store_uri, make_record(*digit(10 * w + k), predicted=2, client_id=writer))
            for w, writer in enumerate(writers) for k in range(3)]
    approve(store_uri, [r["id"] for r in recs if r["id"][0] in "0123456789abc"])  # most, not all
    found = loader.load(open_store(store_uri), SECRET, "all", log=lambda line: None)
    approved = {r["id"] for r in recs if r["id"][0] in "0123456789abc"}
    assert not held & set(found.train.writers) and set(found.held.writers) <= held
    assert set(found.held.ids) == {r["id"] for r in recs if r["client_id"] in held} & approved
    assert set(found.train.ids) == {r["id"] for r in recs if r["client_id"] not in held}  # all: pending ones train
    # Another secret, another split: a client that does not know it cannot choose its side.
    other = {w for w in writers if loader.held_out(w, b"another secret")}
    assert other != held


def frozen(uri, held, states, log=None):
    return evalset.update(open_store(uri), held, states, "feedback-uri", log or (lambda line: None))


def corrections(recs, writer=None):
    """A loader.Corrections of records made by make_record."""
    return loader.Corrections.of([(digit(r["i"])[0], r["label"], r["id"], writer or r["client_id"], None)
                                  for r in recs])


def test_the_evaluation_set_is_frozen_versioned_and_only_ever_approved(store_uri, tmp_path):
    models = open_store(store_uri)
    feedback = str(tmp_path / "feedback")
    recs = []
    for k in range(30):
        record = put(feedback, make_record(*digit(k), predicted=3, client_id=f"held-{k % 6}"))
        recs.append({**record, "i": k})
    approve(feedback, [r["id"] for r in recs[:25]])
    reject(feedback, [recs[25]["id"]])
    states = decisions.states(open_store(feedback))
    # What the loader found of held-out writers: only approved ones reach the set, whatever it is given.
    first = frozen(store_uri, corrections(recs[:25]), states)
    assert len(first) == 25 and evalset.versions(models) == [first.version]
    assert not set(first.ids) & {r["id"] for r in recs[25:]}

    # Later runs see the same digits: the newest version as frozen, whatever order they find records in.
    lines = []
    again = frozen(store_uri, corrections(list(reversed(recs[:25]))), states, lines.append)
    assert again.version == first.version and again.ids == first.ids and (again.x == first.x).all()
    assert lines == [f"evalset: {first.version}: 25 approved corrections of held-out writers, as frozen"]
    assert evalset.versions(models) == [first.version]

    # A reviewer reverses one: the next run freezes a new version without it; the old one stays as it was.
    reject(feedback, [recs[0]["id"]])
    states = decisions.states(open_store(feedback))
    later = frozen(store_uri, corrections(recs[:25]), states)
    assert later.version != first.version and recs[0]["id"] not in later.ids and len(later) == 24
    assert evalset.versions(models) == sorted([first.version, later.version])
    assert evalset.read(models, first.version).ids == first.ids  # the old version stays as it was frozen


def test_a_new_version_needs_enough_new_records_and_no_writer_fills_it(store_uri, tmp_path):
    feedback = str(tmp_path / "feedback")
    # Four writers of 6 records each, and one of 30.
    recs = [{**put(feedback, make_record(*digit(k), predicted=3, client_id=f"pen-{k // 6}" if k < 24 else "busy")),
             "i": k} for k in range(54)]
    approve(feedback, [r["id"] for r in recs])
    states = decisions.states(open_store(feedback))
    first = frozen(store_uri, corrections(recs[:5]), states)
    assert len(first) == 5
    # Fewer new ones than GROWTH_MIN wait; enough make a new version, with at most PER_WRITER of one writer.
    assert frozen(store_uri, corrections(recs[:5 + evalset.GROWTH_MIN - 1]), states).version == first.version
    grown = frozen(store_uri, corrections(recs), states)
    assert grown.version != first.version and len(grown) == 24 + evalset.PER_WRITER
    assert grown.writers.count("busy") == evalset.PER_WRITER
    assert grown.ids[:5] == first.ids  # what was in stays in


def test_the_holdout_secret_is_made_once_and_kept(store_uri):
    models = open_store(store_uri)
    made = evalset.secret(models)
    assert len(made) == 64 and evalset.secret(models) == made
    assert models.list(contract.EVALSETS) == [contract.HOLDOUT_KEY]
