"""Model loading in a real `python -m service`: from a directory and from gs:// on
fake-gcs-server, not ready until the store is reachable, corrupt models refused, hot
swap under concurrent load with no failed request, a graceful SIGTERM, and a killed
worker replaced."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from conftest import ROOT, free_port
from service import store as model_store
from service_helpers import ServiceProcess, data_url, draw_digit, latest_version, png_bytes, publish_copy

SEVEN = png_bytes(draw_digit(7))


def predict(url, timeout=10):
    return requests.post(url + "/predict", json={"image": data_url(SEVEN)}, timeout=timeout)


def copy_to(src_uri, dst_uri):
    """Publish the src store's LATEST model into dst with the real store primitives."""
    src, dst = model_store.open_store(src_uri), model_store.open_store(dst_uri)
    version = src.read_latest()[0]["version"]
    onnx_bytes, meta = model_store.load_verified(src, version)
    dst.create(f"models/{version}/model.onnx", onnx_bytes)
    dst.create(f"models/{version}/model.json", json.dumps(meta).encode())
    dst.swap_latest({"version": version}, dst.read_latest()[1])
    return version


def test_loads_from_a_directory(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store) as server:
        server.wait_ready()
        r = predict(server.url)
        assert r.status_code == 200 and r.json()["digit"] == 7
        assert r.json()["model_version"] == latest_version(store)
        loaded = server.wait_log(lambda e: e.get("logger") == "service.model" and "loaded" in e["message"])
        assert loaded[0]["model_version"] == latest_version(store) and loaded[0]["model_uri"] == store


def test_loads_from_gcs(fake_gcs, trained_store, tmp_path):
    fake_gcs.make_bucket("served-models")
    uri = "gs://served-models/digitdraw"
    version = copy_to(trained_store, uri)
    with ServiceProcess(str(tmp_path), MODEL_URI=uri) as server:
        server.wait_ready()
        r = predict(server.url)
        assert r.status_code == 200 and r.json()["digit"] == 7 and r.json()["model_version"] == version


def test_not_ready_until_the_gcs_bucket_exists(fake_gcs, trained_store, tmp_path):
    uri = "gs://bucket-made-later/models"
    with ServiceProcess(str(tmp_path), MODEL_URI=uri) as server:
        server.wait_alive()
        waiting = server.wait_log(lambda e: e.get("logger") == "service.model" and "retrying" in e["message"])
        assert "bucket-made-later" in waiting[0]["message"] and waiting[0]["severity"] == "WARNING"
        assert requests.get(server.url + "/readyz").status_code == 503
        r = predict(server.url)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        fake_gcs.make_bucket("bucket-made-later")
        version = copy_to(trained_store, uri)
        server.wait_ready(timeout=30)
        assert predict(server.url).json()["model_version"] == version


@pytest.mark.slow  # waits out the GCS client's bounded retries
def test_unreachable_gcs_host_is_logged_and_not_ready(tmp_path):
    # Nothing listens on a free port: every connection is refused.
    with ServiceProcess(str(tmp_path), MODEL_URI="gs://some-bucket/models",
                        STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{free_port()}") as server:
        server.wait_alive()
        # One attempt gives up after the store's bounded retry (the client alone took 2 min).
        waiting = server.wait_log(lambda e: e.get("logger") == "service.model" and "retrying" in e["message"],
                                  timeout=60)
        assert "cannot reach GCS" in waiting[0]["message"] and "gs://some-bucket" in waiting[0]["message"]
        assert requests.get(server.url + "/readyz").status_code == 503


def test_not_ready_until_the_directory_appears(trained_store, tmp_path):
    later = tmp_path / "mounted-later"
    with ServiceProcess(str(tmp_path), MODEL_URI=str(later)) as server:
        server.wait_alive()
        server.wait_log(lambda e: "does not exist" in e.get("message", "") and "retrying" in e["message"])
        for path in ("/readyz", "/model", "/v2/health/ready", "/v2/models/digitdraw"):
            r = requests.get(server.url + path)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready", path
        assert requests.get(server.url + "/healthz").status_code == 200
        assert requests.get(server.url + "/v2/health/live").status_code == 200
        assert predict(server.url).status_code == 503
        shutil.copytree(trained_store, later)
        server.wait_ready(timeout=30)
        assert predict(server.url).status_code == 200


def test_corrupt_model_is_refused_at_start(store, tmp_path):
    publish_copy(store, "corrupt-v2", corrupt=True)
    with ServiceProcess(str(tmp_path), MODEL_URI=store) as server:
        server.wait_alive()
        refused = server.wait_log(lambda e: e.get("severity") == "ERROR" and "refused model corrupt-v2" in e["message"])
        assert "sha256" in refused[0]["message"]
        time.sleep(0.5)
        assert requests.get(server.url + "/readyz").status_code == 503
        assert predict(server.url).status_code == 503


def test_hot_swap_under_load_with_no_failed_request(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_POLL_SECONDS=1, WEB_CONCURRENCY=2,
                        THREADS=2) as server:
        server.wait_ready()
        first = latest_version(store)
        results, stop = [], threading.Event()

        def hammer():
            with requests.Session() as s:
                while not stop.is_set():
                    # a new connection now and then, so both workers get traffic
                    r = s.post(server.url + "/predict", json={"image": data_url(SEVEN)}, timeout=10,
                               headers={"Connection": "close"} if len(results) % 5 == 0 else {})
                    results.append((r.status_code, r.json().get("model_version"), r.json().get("digit")))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            publish_copy(store, "hot-v2")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until both workers serve v2
                n = len(results)
                time.sleep(1.5)
                if results[n:] and all(v == "hot-v2" for _, v, _ in results[n:]):
                    break
            # a corrupt v3 is refused and v2 keeps serving
            publish_copy(store, "corrupt-v3", corrupt=True)
            server.wait_log(lambda e: "refused model corrupt-v3" in e.get("message", ""))
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
        versions = [v for _, v, _ in results]
        assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:5]
        assert all(digit == 7 for _, _, digit in results)
        assert versions[0] == first and versions[-1] == "hot-v2"
        assert set(versions) == {first, "hot-v2"}
        assert len(results) > 50
        # once a request has seen v2, that worker never goes back
        assert requests.get(server.url + "/readyz").json()["model_version"] == "hot-v2"
        metrics = requests.get(server.url + "/metrics").text
        assert 'digitdraw_model_loads_total{result="refused"} 2' in metrics  # one per worker
        assert 'digitdraw_model_info{version="hot-v2"' in metrics


def test_sigterm_lets_the_in_flight_request_finish(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store) as server:
        server.wait_ready()
        [_] = worker_pids(server.proc.pid)
        body = json.dumps({"image": data_url(SEVEN)}).encode()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        time.sleep(0.3)  # the request is in flight: headers read, body still coming
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(body[100:])
        response = b""
        sock.settimeout(10)
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
        sock.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert b'"digit":7' in response
        assert server.proc.wait(timeout=30) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url + "/healthz", timeout=2)
    # The worker left cleanly and by itself: onnxruntime's C++ teardown in a forked process
    # can abort it ("terminate called ...", SIGABRT), and a worker that does not stop in
    # GRACEFUL_TIMEOUT is killed.
    with open(server.log_path) as f:
        raw = f.read()
    assert "SIGABRT" not in raw and "terminate called" not in raw, raw[-2000:]
    messages = [e["message"] for e in server.logs()]  # every line is JSON
    assert "Stopped worker-1" in messages and not any("Killing" in m or "Unexpected" in m for m in messages), messages


def worker_pids(pid):
    """The server's worker processes: the children of its main process."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(p) for p in f.read().split())


def test_a_killed_worker_is_replaced_and_keeps_its_counts(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store, WEB_CONCURRENCY=2) as server:
        server.wait_ready()
        for _ in range(6):
            assert predict(server.url).status_code == 200
        first = worker_pids(server.proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the replacement starts and loads the model
            time.sleep(0.2)
            try:  # each worker has its own listening socket: what was queued on the dead one is reset
                info = requests.get(server.url + "/metrics", timeout=5).text
            except requests.ConnectionError:
                continue
            now = worker_pids(server.proc.pid)
            if len(now) == 2 and first[0] not in now and info.count("digitdraw_model_info{") == 2:
                break
        else:
            raise AssertionError(f"no replacement worker in 30 s: {worker_pids(server.proc.pid)}")
        assert predict(server.url).status_code == 200
        # The new worker took over the dead one's metrics slot: no request is forgotten.
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        version = latest_version(store)
        assert f'digitdraw_requests_total{{route="/predict",status="200",model_version="{version}"}} 7' in metrics
    assert any(e["message"].startswith("Respawning worker") for e in server.logs())


def test_help_and_configuration_errors():
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0
    for name in ("PORT", "HOST", "MODEL_URI", "MODEL_POLL_SECONDS", "MAX_BODY_BYTES", "MAX_IMAGE_PIXELS",
                 "MAX_BATCH", "CORS_ORIGINS", "LOG_LEVEL", "FRONTEND_DIR", "WEB_CONCURRENCY", "THREADS"):
        assert name in out.stdout
    bad = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True,
                         env={**env, "MAX_BODY_BYTES": "lots"}, timeout=60)
    assert bad.returncode == 2 and "MAX_BODY_BYTES" in bad.stderr and "integer" in bad.stderr
