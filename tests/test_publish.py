"""Publishing to the model store: layout, verification, the promotion gate, atomicity.

Every test runs against a local directory and against gs:// on a real fake-gcs-server
(which honours generation preconditions). Concurrent publishers are real threads and
real processes; crashes are real SIGKILLs at a chosen step of publish(). What the
service will do is checked with its own reader, service.store.load_verified.
"""
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import uuid

import pytest

from conftest import free_port
from publish_helpers import gate, meta_for, overwrite, tiny_onnx
from service.store import (GCS_RETRY_SECONDS, PointerConflict, StoreError, StoreNotFound, StoreUnreachable,
                           load_verified, open_store, sha256_hex)
from training.publish import publish

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "publish_helpers.py")
BUCKET = "digitdraw-publish-tests"


def latest(uri):
    pointer, _ = open_store(uri).read_latest()
    return pointer and pointer["version"]


def quiet(lines=None):
    return (lambda line: lines.append(line)) if lines is not None else (lambda line: None)


def test_publish_writes_the_contract_layout(store_uri):
    onnx_bytes = tiny_onnx("layout", 0.99)
    seen = []  # (log line, LATEST at that moment): LATEST must appear only with the last step

    def log(line):
        seen.append((line, latest(store_uri)))

    result = publish(onnx_bytes, meta_for(0.99, training={"epochs": 4}, code_revision="abc123"), [store_uri], gate(),
                     log=log)

    version = result["version"]
    sha = sha256_hex(onnx_bytes)
    assert re.fullmatch(r"\d{8}T\d{6}Z-" + sha[:8], version)
    assert result["sha256"] == sha
    assert result["stores"][store_uri] == {"promoted": True, "reason": "no LATEST yet", "previous": None,
                                           "conflicts": 0}
    assert latest(store_uri) == version
    model, meta = load_verified(open_store(store_uri), version)  # exactly what the service does
    assert model == onnx_bytes
    assert meta["version"] == version and meta["sha256"] == sha and meta["size_bytes"] == len(onnx_bytes)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["created_at"])
    assert meta["input"] == {"name": "image", "shape": ["N", 1, 28, 28], "dtype": "float32"}
    assert meta["output"] == {"name": "logits", "shape": ["N", 10], "dtype": "float32"}
    assert meta["metrics"] == {"val_accuracy": 0.99}
    assert meta["training"] == {"epochs": 4} and meta["code_revision"] == "abc123" and meta["data"] == "test"
    assert open_store(store_uri).list_versions() == [version]

    # Files first, then verification, then LATEST: no reader saw LATEST before the last step.
    steps = [line for line, _ in seen]
    order = [next(i for i, s in enumerate(steps) if key in s)
             for key in ("model.onnx", "model.json", "verified", "moving LATEST", "LATEST is now")]
    assert order == sorted(order), steps
    assert all(pointer is None for _, pointer in seen[:order[-1]]), seen
    assert seen[order[-1]][1] == version


def test_publish_to_several_stores_gives_one_version(tmp_path, fake_gcs):
    fake_gcs.make_bucket(BUCKET)
    uris = [str(tmp_path / "pvc"), f"gs://{BUCKET}/{uuid.uuid4().hex[:12]}"]
    result = publish(tiny_onnx("two", 0.98), meta_for(0.98), uris, gate(), log=quiet())
    assert sorted(result["stores"]) == sorted(uris)
    for uri in uris:
        assert result["stores"][uri]["promoted"]
        assert latest(uri) == result["version"]
        load_verified(open_store(uri), result["version"])


def test_promotion_gate_margin_and_force(store_uri):
    # The gate scores both models on its 500 digits: one digit is 0.002, the margin.
    store = open_store(store_uri)
    best = publish(tiny_onnx("best", 0.990), meta_for(0.990), [store_uri], gate(), log=quiet())["version"]

    lines = []
    worse = publish(tiny_onnx("worse", 0.984), meta_for(0.984), [store_uri], gate(), log=quiet(lines))
    outcome = worse["stores"][store_uri]
    assert not outcome["promoted"] and outcome["previous"] == best
    assert "margin" in outcome["reason"] and "mnist_val 0.9840 vs 0.9900" in outcome["reason"]
    assert any("NOT promoting" in line and "margin" in line for line in lines), lines  # the reason is logged
    assert latest(store_uri) == best
    load_verified(store, worse["version"])  # published all the same
    assert sorted(store.list_versions()) == sorted([best, worse["version"]])
    evaluation = load_verified(store, worse["version"])[1]["evaluation"]  # model.json keeps the verdict
    assert (evaluation["champion"], evaluation["promote"]) == (best, False)
    assert evaluation["challenger_scores"] == {"mnist_val": 0.984}
    assert evaluation["champion_scores"] == {"mnist_val": 0.99}

    # Within the margin (0.990 - 0.988 <= 0.002, and exactly at it) is promoted.
    close = publish(tiny_onnx("close", 0.988), meta_for(0.988), [store_uri], gate(), log=quiet())
    assert close["stores"][store_uri]["promoted"] and latest(store_uri) == close["version"]
    at_margin = publish(tiny_onnx("at-margin", 0.986), meta_for(0.986), [store_uri], gate(), log=quiet())
    assert at_margin["stores"][store_uri]["promoted"]

    # A wider margin lets a worse model through; force promotes regardless, and says so.
    wide = publish(tiny_onnx("wide", 0.95), meta_for(0.95), [store_uri], gate(0.05, 1.0), log=quiet())
    assert wide["stores"][store_uri]["promoted"]
    forced = publish(tiny_onnx("forced", 0.50), meta_for(0.50), [store_uri], gate(), force=True, log=quiet())
    assert forced["stores"][store_uri]["promoted"] and "forced" in forced["stores"][store_uri]["reason"]
    assert latest(store_uri) == forced["version"]


def check_race(results, accs, uri, margin=0.002):
    """Publishers that raced for LATEST left one linear history: no two won from the same LATEST."""
    by_version = {r["version"]: r["stores"][uri] for r in results}
    won = {v: o for v, o in by_version.items() if o["promoted"]}
    # Each winner replaced a different LATEST; following them from None visits every winner once.
    replaced = [o["previous"] for o in won.values()]
    assert len(set(replaced)) == len(replaced), by_version
    successor = {o["previous"]: v for v, o in won.items()}
    chain, current = [], None
    while current in successor:
        current = successor[current]
        chain.append(current)
    assert sorted(chain) == sorted(won), by_version
    assert latest(uri) == chain[-1]
    # Everyone who lost a swap re-read LATEST and re-applied the gate.
    assert sum(o["conflicts"] for o in by_version.values()) >= len(results) - 1, by_version
    # Those not promoted were judged against a better model that really was LATEST at some point.
    for v, o in by_version.items():
        if not o["promoted"]:
            assert o["previous"] in chain and accs[o["previous"]] - accs[v] > margin, by_version
    # The best model always ends up LATEST: nothing can beat it by the margin.
    assert accs[chain[-1]] == max(accs.values())


ACCS = [0.97, 0.99, 0.98, 0.96]


def test_concurrent_threads_cannot_both_win(store_uri):
    barrier = threading.Barrier(len(ACCS), timeout=60)

    def publisher(i):
        first = [True]

        def log(line):
            # Hold everyone right before the first swap, so all read the same LATEST and race.
            if "moving LATEST" in line and first[0]:
                first[0] = False
                barrier.wait()

        return publish(tiny_onnx(f"thread-{i}", ACCS[i]), meta_for(ACCS[i]), [store_uri], gate(), log=log)

    with concurrent.futures.ThreadPoolExecutor(len(ACCS)) as pool:
        results = list(pool.map(publisher, range(len(ACCS))))
    accs = {r["version"]: ACCS[i] for i, r in enumerate(results)}
    assert len(accs) == len(ACCS)
    check_race(results, accs, store_uri)


def run_publisher(uri, acc, tag, *extra):
    return subprocess.Popen([sys.executable, HELPER, uri, str(acc), tag, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_concurrent_processes_cannot_both_win(store_uri, tmp_path):
    accs = ACCS[:3]
    procs = [run_publisher(store_uri, acc, f"proc-{i}", "--barrier", str(tmp_path / "barrier"), str(len(accs)))
             for i, acc in enumerate(accs)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        results.append(json.loads(out.strip().splitlines()[-1]))
    check_race(results, {r["version"]: acc for r, acc in zip(results, accs)}, store_uri)


@pytest.mark.parametrize("crash_at", ["uploaded", "verified", "moving LATEST"])
def test_crash_before_pointer_move_keeps_old_latest(store_uri, crash_at):
    good = publish(tiny_onnx("good", 0.97), meta_for(0.97), [store_uri], gate(), log=quiet())["version"]

    proc = run_publisher(store_uri, 0.99, f"crash-{crash_at}", "--crash-at", crash_at)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -9, out  # SIGKILLed at that step, not a clean exit
    assert crash_at in out

    store = open_store(store_uri)
    assert latest(store_uri) == good
    _, meta = load_verified(store, good)  # the service still loads the old good version
    assert meta["version"] == good
    orphans = [v for v in store.list_versions() if v != good]
    assert len(orphans) == 1
    if crash_at == "uploaded":  # killed after model.onnx, before model.json
        with pytest.raises(StoreNotFound):
            load_verified(store, orphans[0])

    # The next publish is not confused by the orphan.
    after = publish(tiny_onnx("after", 0.99), meta_for(0.99), [store_uri], gate(), log=quiet())
    assert after["stores"][store_uri]["promoted"] and after["stores"][store_uri]["previous"] == good
    assert latest(store_uri) == after["version"]


def test_corrupt_upload_is_refused_and_not_promoted(store_uri):
    good = publish(tiny_onnx("good", 0.97), meta_for(0.97), [store_uri], gate(), log=quiet())["version"]
    onnx_bytes = tiny_onnx("to-corrupt", 0.99)
    corrupt = onnx_bytes[:-100] + bytes(100)

    def log(line):
        # Something between us and the store mangles model.onnx after it was written.
        if line.endswith("/model.onnx") and "uploaded" in line:
            overwrite(store_uri, line.split("uploaded ")[1], corrupt)

    with pytest.raises(StoreError, match="sha256") as err:
        publish(onnx_bytes, meta_for(0.99), [store_uri], gate(), log=log)
    assert store_uri in str(err.value)
    store = open_store(store_uri)
    assert latest(store_uri) == good
    bad = [v for v in store.list_versions() if v != good]
    assert len(bad) == 1
    with pytest.raises(StoreError, match="does not match"):
        load_verified(store, bad[0])  # the service refuses it too


def test_missing_bucket_is_unreachable(fake_gcs):
    uri = "gs://no-such-bucket-digitdraw/models-prefix"
    with pytest.raises(StoreUnreachable, match="gs://no-such-bucket-digitdraw does not exist") as err:
        publish(tiny_onnx("x", 0.99), meta_for(0.99), [uri], gate(), log=quiet())
    assert uri in str(err.value)
    # The service's first call reports it too, rather than "no model yet".
    with pytest.raises(StoreUnreachable, match="does not exist"):
        open_store(uri).read_latest()


@pytest.mark.slow  # waits out the GCS client's bounded retries
def test_unreachable_gcs_host_is_reported_after_a_bounded_retry(monkeypatch):
    # Nothing listens on a free port: every connection is refused.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    uri = "gs://some-bucket/models-prefix"
    with pytest.raises(StoreUnreachable, match="cannot reach GCS") as err:
        publish(tiny_onnx("x", 0.99), meta_for(0.99), [uri], gate(), log=quiet())
    assert uri in str(err.value)
    # The client's own default retries for 120 s; the store gives up after GCS_RETRY_SECONDS.
    assert f"Timeout of {float(GCS_RETRY_SECONDS)}s exceeded" in str(err.value)


def test_missing_object_in_bucket_named_bucket_is_not_found(fake_gcs):
    # Regression: the bucket-or-object guess once read the word "bucket" in the URL.
    fake_gcs.make_bucket("my-bucket")
    store = open_store("gs://my-bucket/p")
    with pytest.raises(StoreNotFound):
        store.read("models/nope/model.json")
    assert store.read_latest() == (None, None)


def test_unwritable_directory_is_unreachable_and_other_stores_still_publish(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store directory should be")
    good, bad = str(tmp_path / "store"), str(blocker / "store")
    with pytest.raises(StoreUnreachable) as err:
        publish(tiny_onnx("x", 0.99), meta_for(0.99), [bad, good], gate(), log=quiet())
    assert bad in str(err.value) and good in str(err.value)  # names the failed store and the one that worked
    assert latest(good) is not None


@pytest.mark.parametrize("onnx_bytes, meta, match", [
    (b"not onnx at all", meta_for(0.99), "not a valid ONNX model"),
    (tiny_onnx(input_name="input"), meta_for(0.99), "input named 'image'"),
    (tiny_onnx(batch=1), meta_for(0.99), "dynamic batch"),
    (tiny_onnx(), {"metrics": {}}, "val_accuracy"),
    (tiny_onnx(), meta_for(99.1), "fraction"),
    (tiny_onnx(), {**meta_for(0.99), "sha256": "x"}, "publish writes itself"),
    (tiny_onnx(), meta_for(0.99, when=object()), "JSON"),
])
def test_unusable_model_or_meta_writes_nothing(tmp_path, onnx_bytes, meta, match):
    uri = str(tmp_path / "store")
    with pytest.raises(ValueError, match=match):
        publish(onnx_bytes, meta, [uri], gate(), log=quiet())
    assert not os.path.exists(uri)


def test_pointer_conflict_is_raised_when_latest_keeps_moving(tmp_path):
    # Another publisher wins every round: after the bounded retries we give up loudly.
    uri = str(tmp_path / "store")
    publish(tiny_onnx("first", 0.97), meta_for(0.97), [uri], gate(), log=quiet())
    rounds = []

    def log(line):
        if "moving LATEST" in line:  # between our read and our swap, someone else moves LATEST
            rounds.append(line)
            publish(tiny_onnx(f"rival-{len(rounds)}", 0.97), meta_for(0.97), [uri], gate(), log=quiet())

    with pytest.raises(PointerConflict, match="gave up after 3 attempts"):
        publish(tiny_onnx("unlucky", 0.97), meta_for(0.97), [uri], gate(), log=log, attempts=3)
    assert len(rounds) == 3
    assert latest(uri).endswith(sha256_hex(tiny_onnx("rival-3", 0.97))[:8])  # the last rival holds LATEST


def test_publishing_the_same_model_again_publishes_and_moves_nothing(store_uri):
    """A finished run rerun exports byte-identical bytes: no new version, LATEST unmoved,
    no history entry, and the log says so."""
    from training import registry

    onnx_bytes = tiny_onnx("rerun")
    first = publish(onnx_bytes, meta_for(0.99), [store_uri], gate(), log=quiet())
    store = open_store(store_uri)
    moves = registry.history(store)
    lines = []
    again = publish(onnx_bytes, meta_for(0.99), [store_uri], gate(), log=quiet(lines))
    assert store.list_versions() == [first["version"]]
    assert latest(store_uri) == first["version"] and registry.history(store) == moves
    outcome = again["stores"][store_uri]
    assert outcome["previous"] == first["version"] and first["version"] in outcome["reason"]
    assert any("already holds this model" in line and "not publishing or promoting it again" in line
               for line in lines), lines
