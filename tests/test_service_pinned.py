"""Pinned versions: MODEL_VERSION serves exactly one version and ignores LATEST, and the
registry's promote and rollback move a following service, never a pinned one. Two real
`python -m service` processes on one store are the stable and canary revisions of a
Knative Service, on one machine."""
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT
from service_helpers import ServiceProcess, data_url, draw_digit, latest_version, png_bytes, publish_copy

pytestmark = pytest.mark.slow

SEVEN = png_bytes(draw_digit(7))


def serving(server):
    r = requests.post(server.url + "/predict", json={"image": data_url(SEVEN)}, timeout=10)
    assert r.status_code == 200
    return r.json()["model_version"]


def registry(store, *args):
    return subprocess.run([sys.executable, "-m", "training.registry", "--store", store, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def wait_for(fn, expected, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn() == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"still {fn()!r}, not {expected!r}, after {timeout}s")


def test_promote_and_rollback_move_the_follower_and_never_the_pinned(store, tmp_path):
    first = latest_version(store)
    publish_copy(store, "candidate-v2", move=False)
    with ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_POLL_SECONDS=1) as follower, \
            ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_POLL_SECONDS=1,
                           MODEL_VERSION="candidate-v2") as pinned:
        follower.wait_ready()
        pinned.wait_ready()
        assert (serving(follower), serving(pinned)) == (first, "candidate-v2")
        assert requests.get(pinned.url + "/readyz").json()["mode"] == "pinned"
        assert requests.get(follower.url + "/readyz").json()["mode"] == "following"
        assert requests.get(pinned.url + "/model").json()["mode"] == "pinned"
        assert re.search(r'digitdraw_model_info\{version="candidate-v2",worker="\d+",mode="pinned"\} 1',
                         requests.get(pinned.url + "/metrics").text)
        pinned.wait_log(lambda e: "candidate-v2 loaded" in e.get("message", "") and e.get("mode") == "pinned")

        # Promote the canary's version: the follower moves to it, the pinned one stays.
        assert registry(store, "promote", "candidate-v2", "--reason", "canary wins").returncode == 0
        wait_for(lambda: serving(follower), "candidate-v2")
        # Roll back: the follower returns, the pinned one never moved.
        result = registry(store, "rollback", "--reason", "back")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: serving(follower), first)
        assert serving(pinned) == "candidate-v2"
        # Each counts its predictions under its own version: one Prometheus can compare them.
        assert f'digitdraw_predictions_total{{model_version="{first}"}}' in requests.get(follower.url + "/metrics").text
        assert 'digitdraw_predictions_total{model_version="candidate-v2"}' in requests.get(pinned.url + "/metrics").text


def test_a_pinned_service_ignores_latest(store, tmp_path):
    first = latest_version(store)
    with ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_POLL_SECONDS=1, MODEL_VERSION=first) as server:
        server.wait_ready()
        publish_copy(store, "moved-v2")
        time.sleep(3)  # three polls of a following service
        assert latest_version(store) == "moved-v2" and serving(server) == first
        assert not any("moved-v2" in e.get("message", "") for e in server.logs())


def test_a_pinned_version_that_fails_verification_is_refused_and_stays_not_ready(store, tmp_path):
    publish_copy(store, "corrupt-v2", corrupt=True, move=False)
    with ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_VERSION="corrupt-v2") as server:
        server.wait_alive()
        server.wait_log(lambda e: "refused model corrupt-v2" in e.get("message", "") and e.get("mode") == "pinned")
        r = requests.get(server.url + "/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        assert requests.post(server.url + "/predict", json={"image": data_url(SEVEN)}).status_code == 503
        assert requests.get(server.url + "/healthz").status_code == 200


def test_a_malformed_pin_is_a_configuration_error(store):
    result = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MODEL_URI": store, "MODEL_VERSION": "../../etc"})
    assert result.returncode == 2 and "MODEL_VERSION='../../etc' is not a model version name" in result.stderr
