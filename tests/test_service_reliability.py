"""The service as deployed (one process, one request thread), attacked the way the open internet would.

Every test runs a real `python -m service` with the Knative manifest's WEB_CONCURRENCY=1
and THREADS=1 and replays one attack over raw sockets or HTTP: stalled uploads and
headers, extreme images and batches, pathological JSON, oversized chunked bodies, floods
of feedback, a model directory that lies about its version, a broken store, a master
killed with SIGKILL, a second server on a taken port. None may get a 5xx, and liveness
must keep answering within a second.
"""
import base64
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from conftest import ROOT
from service import png
from service_helpers import ServiceProcess, data_url, draw_digit, latest_version, png_bytes, publish_copy

pytestmark = pytest.mark.slow

DEPLOYED = {"WEB_CONCURRENCY": "1", "THREADS": "1", "READ_TIMEOUT_SECONDS": "3"}
SEVEN = png_bytes(draw_digit(7))


@pytest.fixture
def server(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store, FEEDBACK_URI=str(tmp_path / "feedback"), **DEPLOYED) as s:
        s.wait_ready()
        yield s


def healthz_seconds(url):
    started = time.monotonic()
    r = requests.get(url + "/healthz", timeout=5)
    assert r.status_code == 200
    return time.monotonic() - started


def stalled(port, path="/predict", length=100_000, sent=b'{"image": "'):
    """A connection that sent its headers and the first bytes of its body, then stopped."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (path.encode(), length) + sent)
    return sock


def response_of(sock, timeout=10):
    """(status, headers dict, body bytes) read off ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def test_stalled_uploads_do_not_stall_the_service_and_get_408(server):
    socks = [stalled(server.port) for _ in range(3)]  # more than processes x threads
    try:
        time.sleep(0.3)
        assert healthz_seconds(server.url) < 1
        r = requests.post(server.url + "/predict", json={"image": data_url(SEVEN)}, timeout=5)
        assert r.status_code == 200 and r.json()["digit"] == 7
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
        for sock in socks:  # READ_TIMEOUT_SECONDS=3 after they started
            status, headers, body = response_of(sock)
            assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
            assert headers["x-request-id"]
    finally:
        for sock in socks:
            sock.close()


def test_a_stalled_feedback_upload_gets_408_too(server):
    sock = stalled(server.port, "/feedback")
    try:
        assert healthz_seconds(server.url) < 1
        status, _, body = response_of(sock)
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
    finally:
        sock.close()


def test_stalled_headers_are_cut_off(server):
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        assert healthz_seconds(server.url) < 1
        sock.settimeout(8)
        started = time.monotonic()
        rest = sock.recv(65536)  # the server gives up on the headers and closes (or answers 408)
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:100]
        assert time.monotonic() - started < 8
    finally:
        sock.close()


class IdleConnections:
    """``n`` connections held open, half silent and half stuck in their headers, each
    reopened as soon as the server closes it (as an attacker would). ``closed`` counts the
    server's closes."""

    def __init__(self, port, n):
        self.port, self.selector, self.closed = port, selectors.DefaultSelector(), 0
        for i in range(n):
            self._open(i)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reopen, daemon=True)
        self._thread.start()

    def _open(self, i):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, i)

    def _reopen(self):
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:  # the server closed it (a 408 is followed by the close)
                    self.selector.unregister(key.fileobj)
                    key.fileobj.close()
                    self.closed += 1
                    self._open(key.data)

    def close(self):
        self._stop.set()
        self._thread.join()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def test_idle_and_slow_header_connections_do_not_starve_liveness(server):
    """More connections than Granian's default limit (1,024), kept open through a whole round
    of header timeouts (READ_TIMEOUT_SECONDS=3): liveness answers within a second throughout,
    and the server does close them."""
    attack = IdleConnections(server.port, 1030)
    try:
        slowest, probes, deadline = 0.0, 0, time.monotonic() + 60
        while attack.closed < 1030 and time.monotonic() < deadline:
            slowest, probes = max(slowest, healthz_seconds(server.url)), probes + 1
        assert attack.closed >= 1030, f"the server closed only {attack.closed} idle connections in 60 s"
        assert slowest < 1, f"/healthz took {slowest:.2f} s with 1,030 idle connections open"
        assert probes > 10
    finally:
        attack.close()


def test_an_oversized_chunked_body_is_413(server):
    def chunks():
        for _ in range(30):
            yield b"x" * 65536  # 1.9 MiB in all, over MAX_BODY_BYTES (1 MiB)

    r = requests.post(server.url + "/predict", data=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
    r = requests.post(server.url + "/feedback", data=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")


def one_row_png(width):
    return png.grey(np.zeros((1, width), np.uint8), level=9)  # a few kB: all black


def test_extreme_images_are_refused_from_their_header(server):
    thin = data_url(one_row_png(4_194_304))
    r = requests.post(server.url + "/predict", json={"images": [thin] * 64}, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "image_too_large")
    assert "images[0]" in r.json()["error"]["message"] and "px on a side" in r.json()["error"]["message"]


def test_a_batch_of_the_largest_accepted_images_is_bounded_and_liveness_answers(server):
    """64 images of the largest accepted size hold more pixels than one request may: the
    batch is refused once its running total passes MAX_BATCH_PIXELS, after a bounded
    amount of decoding, and liveness answers meanwhile."""
    big = png_bytes(draw_digit(7, size=512))  # 512x512 RGBA, at the per-image limit, a few kB
    answers = {}

    def send():
        answers["batch"] = requests.post(server.url + "/predict", json={"images": [data_url(big)] * 64}, timeout=30)

    t = threading.Thread(target=send)
    t.start()
    slowest = max(healthz_seconds(server.url) for _ in range(5))
    t.join()
    assert slowest < 1
    r = answers["batch"]
    assert (r.status_code, r.json()["error"]["code"]) == (413, "image_too_large")
    assert "together" in r.json()["error"]["message"]


@pytest.mark.parametrize("path,body", [
    ("/predict", "[" * 100_000 + "]" * 100_000),
    ("/v2/models/digitdraw/infer", '{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], '
                                   '"data": ' + "[" * 5000 + "]" * 5000 + "}]}"),
    ("/feedback", '{"image": ' + "[" * 50_000 + "]" * 50_000 + ', "label": 1}'),
])
def test_deeply_nested_json_is_400(server, path, body):
    r = requests.post(server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_json")


@pytest.mark.parametrize("data,why", [
    ("[" + "1" * 401 + "]", "an integer too large for FP32"),
    ('["0.5"]', "a numeric string"),
    ("[true]", "a boolean"),
    ("[null]", "null"),
])
def test_oip_data_that_is_not_fp32_numbers_is_400(server, data, why):
    body = ('{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": '
            + data.replace("]", ", 0" * 783 + "]", 1) + "}]}")
    r = requests.post(server.url + "/v2/models/digitdraw/infer", data=body,
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_tensor"), why


def test_an_unknown_oip_model_is_404(server):
    r = requests.post(server.url + "/v2/models/other/infer", json={"inputs": []}, timeout=5)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert "other" in r.json()["error"]["message"]


def test_headers_and_what_clients_are_told(server, store):
    r = requests.get(server.url + "/healthz", timeout=5)
    assert r.headers["Permissions-Policy"].startswith("camera=()")
    assert "Strict-Transport-Security" not in r.headers
    assert r.headers["Server"] == "digitdraw"  # not Granian's banner
    r = requests.get(server.url + "/healthz", headers={"X-Forwarded-Proto": "https"}, timeout=5)
    assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
    long_path = "/" + "a" * 5000
    r = requests.get(server.url + long_path, timeout=5)
    assert r.status_code == 404 and len(r.json()["error"]["message"]) < 200
    model = requests.get(server.url + "/model", timeout=5).json()
    assert "config" not in model and "run_name" not in model and "code_revision" not in model
    assert model["version"] == latest_version(store) and model["mode"] == "following"


def test_not_ready_messages_do_not_name_the_store(tmp_path):
    hidden = tmp_path / "secret-store-name"
    with ServiceProcess(str(tmp_path), MODEL_URI=str(hidden), **DEPLOYED) as s:
        s.wait_alive()
        r = requests.get(s.url + "/readyz", timeout=5)
        assert r.status_code == 503 and "secret-store-name" not in r.text
        s.wait_log(lambda e: "secret-store-name" in json.dumps(e) and e.get("logger") == "service.model")


def flood(url, n, headers=lambda k: {}):
    """Send ``n`` corrections; the status of each (200 and 201 were taken, 429 refused)."""
    return [requests.post(url + "/feedback", json={"image": data_url(SEVEN), "label": 7}, headers=headers(k),
                          timeout=5).status_code for k in range(n)]


def test_feedback_floods_get_429_with_retry_after(store, tmp_path):
    """A bare `python -m service` believes no X-Forwarded-For: a fresh one on each request
    is still the same client."""
    with ServiceProcess(str(tmp_path), MODEL_URI=store, FEEDBACK_URI=str(tmp_path / "fb"), FEEDBACK_RATE_LIMIT=5,
                        **DEPLOYED) as s:
        s.wait_ready()
        codes = flood(s.url, 8, lambda k: {"X-Forwarded-For": f"198.51.100.{k}"})
        assert codes[0] == 201 and set(codes[1:5]) == {200} and codes[5:] == [429] * 3
        r = requests.post(s.url + "/feedback", json={"image": data_url(SEVEN), "label": 7}, timeout=5)
        assert r.json()["error"]["code"] == "rate_limited" and 1 <= int(r.headers["Retry-After"]) <= 60
        metrics = requests.get(s.url + "/metrics", timeout=5).text
        assert 'digitdraw_feedback_total{result="rate_limited"' in metrics


def test_behind_a_trusted_proxy_clients_cannot_walk_around_the_limits(store, tmp_path):
    """As on Knative: the peer (here the test, on 127.0.0.1) is a trusted proxy, and the
    client is the right-most X-Forwarded-For entry it did not vouch for."""
    with ServiceProcess(str(tmp_path), MODEL_URI=store, FEEDBACK_URI=str(tmp_path / "fb"), FEEDBACK_RATE_LIMIT=5,
                        FEEDBACK_NETWORK_RATE_LIMIT=7, FORWARDED_ALLOW_IPS="127.0.0.1", **DEPLOYED) as s:
        s.wait_ready()
        # A second header spelt with underscores would land right-most if it were merged.
        codes = flood(s.url, 7, lambda k: {"X-Forwarded-For": "198.51.100.7", "X_Forwarded_For": f"203.0.113.{k}"})
        assert 429 not in codes[:5] and codes[5:] == [429] * 2
        assert flood(s.url, 1, lambda k: {"X-Forwarded-For": "198.51.100.8"}) != [429]  # another client
        # Every address of one IPv6 /64 is one client.
        codes = flood(s.url, 7, lambda k: {"X-Forwarded-For": f"2001:db8:1:2::{k + 1:x}"})
        assert 429 not in codes[:5] and codes[5:] == [429] * 2
        # One network (an IPv4 /24, an IPv6 /48) has its own limit beside its clients'.
        codes = flood(s.url, 9, lambda k: {"X-Forwarded-For": f"192.0.2.{k + 1}"})
        assert 429 not in codes[:7] and codes[7:] == [429] * 2
        codes = flood(s.url, 9, lambda k: {"X-Forwarded-For": f"2001:db8:5:{k + 1:x}::1"})
        assert 429 not in codes[:7] and codes[7:] == [429] * 2


def test_a_version_directory_that_lies_is_refused_once_and_never_reloaded(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_POLL_SECONDS=1, **DEPLOYED) as s:
        s.wait_ready()
        first = latest_version(store)
        # A copy of the model directory whose model.json still names the first version.
        shutil.copytree(os.path.join(store, "models", first), os.path.join(store, "models", "copied"))
        from service import store as model_store

        st = model_store.open_store(store)
        st.swap_latest({"version": "copied"}, st.read_latest()[1])
        s.wait_log(lambda e: "refused model copied" in e.get("message", ""))
        time.sleep(4)  # four more polls
        refusals = [e for e in s.logs() if "refused model copied" in e.get("message", "")]
        assert len(refusals) == 1 and "says version" in refusals[0]["message"]
        assert requests.get(s.url + "/model", timeout=5).json()["version"] == first
        assert 'digitdraw_model_loads_total{result="refused"} 1' in requests.get(s.url + "/metrics").text


def test_a_broken_store_is_logged_once_then_backs_off(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_POLL_SECONDS=1, **DEPLOYED) as s:
        s.wait_ready()
        os.rename(store, store + ".gone")
        try:
            time.sleep(6)  # six polls fail
            warnings = [e for e in s.logs() if e.get("severity") == "WARNING" and "cannot check" in e["message"]]
            assert len(warnings) == 1, [w["message"] for w in warnings]
            assert requests.post(s.url + "/predict", json={"image": data_url(SEVEN)}, timeout=5).status_code == 200
        finally:
            os.rename(store + ".gone", store)
        s.wait_log(lambda e: "answers again" in e.get("message", "") and "failures" in e["message"])


def test_load_while_the_model_swaps_and_an_upload_is_stalled(store, tmp_path):
    with ServiceProcess(str(tmp_path), MODEL_URI=store, MODEL_POLL_SECONDS=1, **DEPLOYED) as s:
        s.wait_ready()
        sock = stalled(s.port)
        results, stop = [], threading.Event()

        def hammer():
            with requests.Session() as session:
                while not stop.is_set():
                    r = session.post(s.url + "/predict", json={"image": data_url(SEVEN)}, timeout=10)
                    results.append((r.status_code, r.json().get("model_version")))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            publish_copy(store, "swapped-v2")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(v == "swapped-v2" for _, v in results[-5:]):
                time.sleep(0.2)
            assert healthz_seconds(s.url) < 1
        finally:
            stop.set()
            for t in threads:
                t.join()
            sock.close()
        assert results and all(status == 200 for status, _ in results)
        assert results[-1][1] == "swapped-v2"


def test_a_worker_dies_with_its_master_and_the_port_is_freed(store, tmp_path):
    s = ServiceProcess(str(tmp_path), MODEL_URI=store, **DEPLOYED)
    try:
        s.wait_ready()
        with open(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children") as f:
            [worker] = [int(p) for p in f.read().split()]
        os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(timeout=5)
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{worker}") and time.monotonic() < deadline:
            with open(f"/proc/{worker}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # exited, waiting for a parent to reap it
            time.sleep(0.1)
        with pytest.raises(requests.ConnectionError):
            requests.get(s.url + "/healthz", timeout=2)
    finally:
        s.stop()
    again = ServiceProcess(str(tmp_path), port=s.port, MODEL_URI=store, **DEPLOYED)
    try:
        again.wait_ready()  # the port was free again
    finally:
        again.stop()


def test_a_second_server_on_a_taken_port_fails_clearly(server, store):
    result = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HOST": "127.0.0.1", "PORT": str(server.port), "MODEL_URI": store})
    assert result.returncode == 2
    assert f"port {server.port} on 127.0.0.1 is already in use" in result.stderr
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_feedback_stores_a_drawing_once(server, tmp_path):
    body = {"image": data_url(SEVEN), "label": 1, "predicted": 7, "client_id": "writer-1"}
    first = requests.post(server.url + "/feedback", json=body, timeout=5)
    again = requests.post(server.url + "/feedback", json=body, timeout=5)
    assert (first.status_code, first.json()["status"]) == (201, "stored")
    assert (again.status_code, again.json()) == (200, {"id": first.json()["id"], "status": "duplicate"})
    record = json.loads((tmp_path / "feedback" / "records" / f"{first.json()['id']}.json").read_text())
    pixels = np.frombuffer(base64.b64decode(record["pixels"]), np.uint8)
    assert pixels.size == 784 and record["label"] == 1 and record["predicted"] == 7
