"""The model registry CLI, ``python -m training.registry``, run as a real subprocess.

Every test runs against a local directory and against gs:// on a real fake-gcs-server
(the store_uri fixture of tests/conftest.py). The versions are real tiny ONNX models
published with training.publish; corruption is a real overwrite behind the store's back,
and the race is two real processes that both read LATEST before either swaps it.
"""
import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import free_port
from publish_helpers import ROOT, gate, meta_for, overwrite, tiny_onnx
from service import contract
from service.store import load_verified, open_store
from test_publish import latest, quiet
from training import registry
from training.publish import publish

pytestmark = pytest.mark.slow  # runs the registry CLI as processes


ACTOR = "registry-test"
_tags = itertools.count()
_last_second = [0]

# A promoter whose LATEST read waits at a file barrier until every promoter has read it, so
# they all hold the same token when they swap: argv is STORE VERSION BARRIER_DIR N.
RACING_PROMOTER = """
import sys
sys.path.insert(0, "tests")
from publish_helpers import file_barrier
from service.store import GCSStore, LocalStore
from training import registry

uri, version, barrier, n = sys.argv[1:]

def waits_after(read_latest):
    def read_then_wait(self):
        result = read_latest(self)
        file_barrier(barrier, version, int(n))
        return result
    return read_then_wait

for cls in (LocalStore, GCSStore):
    cls.read_latest = waits_after(cls.read_latest)
sys.exit(registry.main(["--store", uri, "promote", version, "--reason", "race " + version]))
"""

# A prune whose first deletion is preceded by a promote of TARGET, as if an operator promoted
# it while the prune ran: argv is STORE TARGET.
PRUNE_WHILE_PROMOTING = """
import sys
from service.store import GCSStore, LocalStore
from training import registry

uri, target = sys.argv[1:]
promoted = []

def promotes_first(delete):
    def promote_then_delete(self, key):
        if not promoted:
            promoted.append(registry.main(["--store", uri, "promote", target, "--reason", "during prune"]))
        return delete(self, key)
    return promote_then_delete

for cls in (LocalStore, GCSStore):
    cls.delete = promotes_first(cls.delete)
code = registry.main(["--store", uri, "prune", "--keep", "1"])
sys.exit(code if promoted == [0] else f"the promote during the prune failed: {promoted}")
"""

# The CLI with GCS calls giving up after a second instead of GCS_RETRY_SECONDS: argv is the CLI's.
SHORT_RETRY_CLI = """
import sys
from service import store
from training import registry



store.GCS_RETRY_SECONDS = 1
sys.exit(registry.main(sys.argv[1:]))
"""


def cli(uri, *args):
    """Run the registry CLI on ``uri``; the CompletedProcess, output as text."""
    return subprocess.run([sys.executable, "-m", "training.registry", "--store", uri, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "DIGITDRAW_ACTOR": ACTOR})


def one_error_line(result, *fragments):
    """The run failed with one line on stderr, no traceback, holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def publish_in_turn(uri, *accs, **meta):
    """Publish one tiny model per accuracy, each in a later second than the one before, so
    that version names sort in publishing order; returns their versions. The gate decides LATEST."""
    versions = []
    for acc in accs:
        if int(time.time()) <= _last_second[0]:
            time.sleep(1.01 - time.time() % 1)
        versions.append(publish(tiny_onnx(f"registry-{next(_tags)}", acc), meta_for(acc, **meta), [uri], gate(),
                                by="publisher", log=quiet())["version"])
        _last_second[0] = int(time.time())
    return versions


def history_json(uri):
    result = cli(uri, "history", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def history_copies(uri):
    return open_store(uri).list(contract.HISTORY)


def test_list_marks_latest_and_reads_every_version(store_uri):
    # v2 is published but refused by the gate (0.90 is far below 0.995), so LATEST stays on v1.
    v0, = publish_in_turn(store_uri, 0.99)  # no quantization record: a float model
    v1, = publish_in_turn(store_uri, 0.995, quantization={"scheme": "int8"})
    v2, = publish_in_turn(store_uri, 0.90, quantization={"scheme": "none"})
    assert latest(store_uri) == v1
    store = open_store(store_uri)
    meta = {v: load_verified(store, v)[1] for v in (v0, v1, v2)}

    table = cli(store_uri, "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "VAL", "ACC", "REAL", "ACC", "SIZE", "MODEL"]
    assert [line.lstrip("* ").split() for line in lines[1:4]] == [  # newest first, LATEST marked
        [v, meta[v]["created_at"], acc, "-", f"{meta[v]['size_bytes'] / 1024:,.1f}", "KiB", kind]
        for v, acc, kind in ((v2, "90.00%", "float"), (v1, "99.50%", "int8"), (v0, "99.00%", "float"))]
    assert [line.startswith("*") for line in lines[1:4]] == [False, True, False]
    assert lines[4:] == ["* = LATEST"]

    listed = cli(store_uri, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[2] == {
        "version": v0, "latest": False, "created_at": meta[v0]["created_at"], "val_accuracy": 0.99,
        "real_accuracy": None, "size_bytes": meta[v0]["size_bytes"], "quantization": "float", "broken": None}
    assert [(r["version"], r["latest"], r["quantization"]) for r in json.loads(listed.stdout)] == [
        (v2, False, "float"), (v1, True, "int8"), (v0, False, "float")]

    # A version directory without model.json (a publish that died) and one whose model.json is
    # garbage are listed as broken; the rest still list.
    orphan = "20000101T000000Z-deadbeef"
    store.create(contract.model_key(orphan, contract.MODEL_FILE), b"half a model")
    overwrite(store_uri, contract.model_key(v0, contract.META_FILE), b"{not json")
    table = cli(store_uri, "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.lstrip("* ").split()[0] for line in lines[1:5]] == [v2, v1, v0, orphan]
    assert lines[3].endswith("BROKEN: model.json is not valid JSON") and lines[4].endswith("BROKEN: no model.json")
    rows = json.loads(cli(store_uri, "list", "--json").stdout)
    assert [(r["version"], r["broken"]) for r in rows] == [
        (v2, None), (v1, None), (v0, "model.json is not valid JSON"), (orphan, "no model.json")]


def test_list_shows_real_drawings_accuracy_when_present(store_uri):
    v0, = publish_in_turn(store_uri, 0.99, metrics={"val_accuracy": 0.99, "real_accuracy": 0.875})
    result = cli(store_uri, "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:5] == ["*", v0, load_verified(open_store(store_uri), v0)[1][
        "created_at"], "99.00%", "87.50%"]
    assert json.loads(cli(store_uri, "list", "--json").stdout)[0]["real_accuracy"] == 0.875


def test_show_prints_model_json_source_and_verification(store_uri):
    version, = publish_in_turn(store_uri, 0.99, run_name="digitdraw-run-7", code_revision="abc123",
                               data_source="bundled sample", metrics={"val_accuracy": 0.99, "real_accuracy": 0.9})
    _, meta = load_verified(open_store(store_uri), version)

    shown = cli(store_uri, "show", version)
    assert shown.returncode == 0, shown.stderr
    head, _, body = shown.stdout.partition("model.json:\n")
    fields = dict(line.split(None, 1) for line in head.splitlines())
    assert fields["version"] == f"{version}  (LATEST)"
    assert fields["run"] == "digitdraw-run-7" and fields["code"] == "abc123" and fields["data"] == "bundled sample"
    assert fields["accuracy"] == "validation 99.00%, real drawings 90.00%"
    assert fields["verified"] == f"yes (model.onnx has sha256 {meta['sha256'][:12]}...)"
    assert json.loads(fields["evaluation"]) == meta["evaluation"]  # the gate's verdict, written by publish
    assert (meta["evaluation"]["promote"], meta["evaluation"]["reason"]) == (True, "no LATEST yet")
    assert json.loads(body) == meta

    # Corrupted behind the store's back: still shown, but it does not verify (exit 6).
    overwrite(store_uri, contract.model_key(version, contract.MODEL_FILE), tiny_onnx("something else"))
    shown = cli(store_uri, "show", version)
    assert shown.returncode == registry.EXIT_UNVERIFIED, shown.stdout + shown.stderr
    head, _, body = shown.stdout.partition("model.json:\n")
    verified = dict(line.split(None, 1) for line in head.splitlines())["verified"]
    assert verified.startswith("NO: ") and "does not match model.json" in verified, verified
    assert json.loads(body) == meta

    missing = cli(store_uri, "show", "20000101T000000Z-00000000")
    assert missing.returncode == registry.EXIT_NOT_FOUND
    one_error_line(missing, "20000101T000000Z-00000000", open_store(store_uri).uri, "list")


def test_promote_moves_latest_and_refuses_what_does_not_verify(store_uri):
    v0, v1 = publish_in_turn(store_uri, 0.98, 0.99)
    assert latest(store_uri) == v1

    promoted = cli(store_uri, "promote", v0, "--reason", "v1 misreads sevens")
    assert promoted.returncode == 0, promoted.stderr
    assert v0 in promoted.stdout and v1 in promoted.stdout
    assert latest(store_uri) == v0
    last = history_json(store_uri)[-1]
    assert {k: last[k] for k in ("version", "previous", "action", "by", "reason")} == {
        "version": v0, "previous": v1, "action": "promote", "by": ACTOR, "reason": "v1 misreads sevens"}

    # The version LATEST names already: said, and nothing is written.
    moves = history_json(store_uri)
    again = cli(store_uri, "promote", v0, "--reason", "again")
    assert again.returncode == 0, again.stderr
    assert "already LATEST" in again.stdout and "nothing changed" in again.stdout
    assert history_json(store_uri) == moves and len(history_copies(store_uri)) == len(moves)

    # A corrupt model.onnx is refused with exit 6; LATEST and the history stay as they were.
    overwrite(store_uri, contract.model_key(v1, contract.MODEL_FILE), tiny_onnx("tampered"))
    refused = cli(store_uri, "promote", v1, "--reason", "try the corrupt one")
    assert refused.returncode == registry.EXIT_UNVERIFIED
    one_error_line(refused, v1, "does not verify", "sha256")
    assert latest(store_uri) == v0 and history_json(store_uri) == moves

    # So is a version directory without model.json, and a version that is not there exits 3.
    orphan = "20000101T000000Z-deadbeef"
    open_store(store_uri).create(contract.model_key(orphan, contract.MODEL_FILE), b"half a model")
    assert cli(store_uri, "promote", orphan, "--reason", "x").returncode == registry.EXIT_UNVERIFIED
    missing = cli(store_uri, "promote", "20000101T000000Z-00000000", "--reason", "typo")
    assert missing.returncode == registry.EXIT_NOT_FOUND
    one_error_line(missing, "20000101T000000Z-00000000", "not in", open_store(store_uri).uri)
    assert latest(store_uri) == v0 and history_json(store_uri) == moves

    # The reason is required and must say something.
    for args in (["promote", v1], ["promote", v1, "--reason", "  "]):
        usage = cli(store_uri, *args)
        assert usage.returncode == registry.EXIT_USAGE and "--reason" in usage.stderr, usage.stderr


def test_concurrent_promotes_exactly_one_wins(store_uri, tmp_path):
    v0, v1, v2 = publish_in_turn(store_uri, 0.97, 0.98, 0.99)
    before = history_json(store_uri)
    barrier = str(tmp_path / "barrier")
    procs = {v: subprocess.Popen([sys.executable, "-c", RACING_PROMOTER, store_uri, v, barrier, "2"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "DIGITDRAW_ACTOR": ACTOR})
             for v in (v0, v1)}
    results = {v: (p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for v, p in procs.items()}
    assert sorted(rc for rc, _, _ in results.values()) == [0, registry.EXIT_CONFLICT], results
    winner, = (v for v, (rc, _, _) in results.items() if rc == 0)
    loser, = (v for v, (rc, _, _) in results.items() if rc != 0)
    lost = subprocess.CompletedProcess([], results[loser][0], results[loser][1], results[loser][2])
    one_error_line(lost, "another writer moved LATEST; run history and try again")

    assert latest(store_uri) == winner
    after = history_json(store_uri)
    assert after[:-1] == before and len(after) == len(before) + 1
    assert {k: after[-1][k] for k in ("version", "previous", "action", "reason")} == {
        "version": winner, "previous": v2, "action": "promote", "reason": f"race {winner}"}
    assert len(history_copies(store_uri)) == len(after)


def test_rollback_returns_to_the_previous_version(store_uri):
    nothing = cli(store_uri, "rollback")
    assert nothing.returncode == registry.EXIT_NO_PREVIOUS
    one_error_line(nothing, "nothing to roll back to", open_store(store_uri).uri, "has no LATEST")

    v0, = publish_in_turn(store_uri, 0.99)
    first = cli(store_uri, "rollback")
    assert first.returncode == registry.EXIT_NO_PREVIOUS
    one_error_line(first, "nothing to roll back to", f"LATEST ({v0}) names no previous version")

    v1, = publish_in_turn(store_uri, 0.90)  # below the gate: published, not promoted
    assert latest(store_uri) == v0
    assert cli(store_uri, "promote", v1, "--reason", "try it on the canary").returncode == 0
    back = cli(store_uri, "rollback", "--reason", "canary misread fours")
    assert back.returncode == 0, back.stderr
    assert f"LATEST {v1} -> {v0}" in back.stdout
    assert latest(store_uri) == v0
    last = history_json(store_uri)[-1]
    assert {k: last[k] for k in ("version", "previous", "action", "by", "reason")} == {
        "version": v0, "previous": v1, "action": "rollback", "by": ACTOR, "reason": "canary misread fours"}

    # A rollback target that no longer verifies is refused, and LATEST stays.
    overwrite(store_uri, contract.model_key(v1, contract.MODEL_FILE), tiny_onnx("tampered"))
    refused = cli(store_uri, "rollback")
    assert refused.returncode == registry.EXIT_UNVERIFIED
    one_error_line(refused, v1, "does not verify")
    assert latest(store_uri) == v0


def test_history_lists_every_move_and_survives_a_missing_copy(store_uri):
    v0, = publish_in_turn(store_uri, 0.99)
    v1, = publish_in_turn(store_uri, 0.90)  # not promoted: no move
    assert cli(store_uri, "promote", v1, "--reason", "canary").returncode == 0
    assert cli(store_uri, "rollback", "--reason", "worse").returncode == 0

    moves = history_json(store_uri)
    assert [(m["seq"], m["action"], m["previous"], m["version"], m["by"], m["reason"]) for m in moves] == [
        (1, "publish", None, v0, "publisher", "no LATEST yet"),
        (2, "promote", v0, v1, ACTOR, "canary"),
        (3, "rollback", v1, v0, ACTOR, "worse")]
    table = cli(store_uri, "history")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SEQ", "AT", "ACTION", "FROM", "TO", "BY", "REASON"]
    assert [line.split()[:1] + line.split()[2:] for line in lines[1:]] == [
        ["1", "publish", "-", v0, "publisher", "no", "LATEST", "yet"],
        ["2", "promote", v0, v1, ACTOR, "canary"],
        ["3", "rollback", v1, v0, ACTOR, "worse"]]
    assert [line.split()[1] for line in lines[1:]] == [m["at"] for m in moves]

    # The current pointer's copy is gone (a mover died after its swap): history still lists it
    # from LATEST, and the next move writes the copy before its own.
    store = open_store(store_uri)
    store.delete(contract.history_key(3))
    assert history_json(store_uri) == moves
    assert cli(store_uri, "promote", v1, "--reason", "second try").returncode == 0
    assert json.loads(store.read(contract.history_key(3))) == moves[2]
    assert history_json(store_uri)[:3] == moves
    assert len(history_copies(store_uri)) == 4


def test_prune_keeps_latest_recent_and_protected_versions(store_uri):
    store = open_store(store_uri)
    v0, v1, v2, v3, v4 = versions = publish_in_turn(store_uri, 0.99, 0.99, 0.99, 0.99, 0.99)
    for version in (v1, v2):
        assert cli(store_uri, "promote", version, "--reason", "test").returncode == 0
    # LATEST is v2; v1 was promoted just before it; v4 is the newest (and the rollback target).
    moves = history_json(store_uri)

    dry = cli(store_uri, "prune", "--keep", "1", "--protect", v0, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [line for line in dry.stdout.splitlines() if line.startswith("would delete")] == [f"would delete {v3}"]
    assert "nothing was deleted" in dry.stdout
    assert store.list_versions() == versions

    unknown = cli(store_uri, "prune", "--keep", "1", "--protect", "20000101T000000Z-00000000")
    assert unknown.returncode == registry.EXIT_NOT_FOUND
    one_error_line(unknown, "20000101T000000Z-00000000", "nothing was deleted")
    assert store.list_versions() == versions

    pruned = cli(store_uri, "prune", "--keep", "1", "--protect", v0)
    assert pruned.returncode == 0, pruned.stderr
    assert f"deleted {v3}" in pruned.stdout.splitlines()
    assert store.list_versions() == [v0, v1, v2, v4]
    assert store.list(f"{contract.MODELS}/{v3}") == []
    assert latest(store_uri) == v2 and history_json(store_uri) == moves
    for version in (v0, v1, v2, v4):
        load_verified(store, version)

    # Without --protect, v0 goes; LATEST and the versions it named last stay even at --keep 0.
    assert cli(store_uri, "prune", "--keep", "0").returncode == 0
    assert store.list_versions() == [v1, v2, v4]
    assert cli(store_uri, "prune", "--keep", "-1").returncode == registry.EXIT_USAGE


def test_prune_stops_when_latest_moves_under_it(store_uri):
    store = open_store(store_uri)
    v0, v1, v2, v3 = publish_in_turn(store_uri, 0.99, 0.90, 0.90, 0.90)  # only v0 passes the gate
    assert latest(store_uri) == v0  # so prune --keep 1 would delete v1 and v2

    result = subprocess.run([sys.executable, "-c", PRUNE_WHILE_PROMOTING, store_uri, v2], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "DIGITDRAW_ACTOR": ACTOR})
    assert result.returncode == registry.EXIT_CONFLICT, result.stdout + result.stderr
    one_error_line(result, "another writer moved LATEST while pruning", "stopped after deleting 1 of 2")
    assert f"deleted {v1}" in result.stdout.splitlines()
    assert latest(store_uri) == v2 and store.list_versions() == [v0, v2, v3]
    load_verified(store, v2)  # what LATEST names now is whole


def test_unreachable_store_exits_4_naming_the_store(fake_gcs, tmp_path):
    uri = "gs://no-such-bucket-digitdraw/models"
    for args in (["list"], ["show", "v"], ["promote", "v", "--reason", "r"], ["rollback"], ["history"],
                 ["prune", "--keep", "1"]):
        result = cli(uri, *args)
        assert result.returncode == registry.EXIT_UNREACHABLE, (args, result.stderr)
        one_error_line(result, uri, "gs://no-such-bucket-digitdraw does not exist", "--store or env MODEL_URI")

    missing_dir = str(tmp_path / "not-mounted")
    for args in (["list"], ["promote", "v", "--reason", "r"]):
        result = cli(missing_dir, *args)
        assert result.returncode == registry.EXIT_UNREACHABLE, (args, result.stderr)
        one_error_line(result, missing_dir, "does not exist")


def test_unreachable_gcs_host_exits_4_after_the_retry(tmp_path):
    # Nothing listens on a free port: every connection is refused until the (shortened) retry ends.
    uri = "gs://some-bucket/models"
    result = subprocess.run([sys.executable, "-c", SHORT_RETRY_CLI, "--store", uri, "list"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == registry.EXIT_UNREACHABLE, result.stderr
    one_error_line(result, uri, "cannot reach GCS", "Timeout of 1.0s exceeded")


def test_bad_store_uri_and_invalid_latest(store_uri):
    usage = cli("s3://bucket/models", "list")
    assert usage.returncode == registry.EXIT_USAGE
    one_error_line(usage, "s3://bucket/models", "gs://bucket/prefix")

    publish_in_turn(store_uri, 0.99)
    overwrite(store_uri, contract.LATEST, b"not a pointer")
    result = cli(store_uri, "list")
    assert result.returncode == registry.EXIT_INVALID
    one_error_line(result, contract.LATEST, "not a valid pointer")


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path):
    # `registry list | head`: the pipe's reader is gone before the table is written.
    uri = str(tmp_path / "store")
    publish_in_turn(uri, 0.99)
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run([sys.executable, "-m", "training.registry", "--store", uri, "list"], cwd=ROOT,
                                stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert result.returncode == registry.EXIT_OK and result.stderr == "", result.stderr


def test_store_defaults_to_model_uri_and_may_follow_the_command(store_uri, tmp_path):
    version, = publish_in_turn(store_uri, 0.99)
    env = {**os.environ, "MODEL_URI": store_uri}
    by_env = subprocess.run([sys.executable, "-m", "training.registry", "list", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env=env)
    assert by_env.returncode == 0, by_env.stderr
    assert [r["version"] for r in json.loads(by_env.stdout)] == [version]
    after = subprocess.run([sys.executable, "-m", "training.registry", "list", "--json", "--store",
                            str(tmp_path / "empty")], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert after.returncode == registry.EXIT_UNREACHABLE  # the flag wins over MODEL_URI
    assert str(tmp_path / "empty") in after.stderr
