"""Serving benchmark: the prediction service against the original app, in the same run.

For each server (service: `python -m service`; baseline: bench/baseline_app, the
original Flask-dev-server + torch app) it measures:
  - cold start: process launch -> first 200 on POST /predict, model on local disk;
  - throughput posting 280x280 canvas PNGs as JSON data URLs with the preview asked for,
    as the frontend sends them (held-out handwriting rendered and encoded by the page's
    own pad.js in Chromium; see frontend_canvases), at concurrency 1 and 8, with one
    load generator for both: one client process per connection, raw sockets,
    keep-alive; requests/s, p50/p99 latency and errors. Both servers run at once and
    take turns, --rounds times each, and each figure is the median of those rounds, so
    the machine's drift hits both alike;
  - server CPU time per request: user+sys of every server process (/proc), divided by
    the requests answered in the same window;
  - peak RSS (VmHWM summed over the server's processes) and PSS.
For the service alone it also measures one worker pinned to one core (taskset), which
is the capacity per Knative pod, and the installed size of service/requirements.txt in
a fresh virtual environment (it stands in for the image size).

    python bench/serve_bench.py                 # the full run, about 6 minutes
    python bench/serve_bench.py --quick         # shorter phases, no fresh venv

Results go to bench/results/serve-<UTC time>.json. The machine's other load shows up
in the figures: rerun when it is quiet, and compare only figures from the same run.
"""
import argparse
import base64
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import machine  # noqa: E402  bench/machine.py
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {"throughput_ratio_c8": 3.0, "p99_ms_c8": 25.0, "errors": 0, "cpu_ms_per_request": 1.5,
           "cold_start_s": 0.5}


# ---- the requests: 280x280 canvases, as the frontend sends them ----------------------------

def frontend_canvases(n, rgba=False):
    """``n`` 280x280 canvas PNGs exactly as the frontend sends them: held-out MNIST digits
    traced into pen strokes (tests/frontend_helpers.py), in the handwriting evaluation's
    sizes, positions and pen widths, rendered by the page's own Pad (frontend/pad.js) in
    Chromium and encoded by it as the page sends them: black on white, 8-bit grey
    (frontend/png.js). With ``rgba``, the same drawings encoded by the canvas's own
    toDataURL instead (RGBA), as a browser without CompressionStream sends them."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from frontend_helpers import CHROMIUM, VARIANTS, launch_browser, mnist_to_strokes, place, validation_digits
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        sys.exit(f"error: no Chromium at {CHROMIUM} to render the frontend's canvases; install it "
                 f"(apt-get install chromium) or post Pillow-drawn ones with --canvases drawn")

    images, _, _ = validation_digits(count=n)
    drawings = []
    for k, image in enumerate(images):
        variant = VARIANTS[k % len(VARIANTS)]
        drawings.append({"strokes": place(mnist_to_strokes(image), variant["size"], variant["center"]),
                         "width": variant["stroke"]})
    origin = "http://frontend.invalid"  # a blank page, and the scripts from the frontend directory

    def serve(route):
        name = route.request.url.removeprefix(f"{origin}/")
        if name in ("pad.js", "png.js"):
            route.fulfill(path=os.path.join(ROOT, "frontend", name), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html>", content_type="text/html")

    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        try:
            page = browser.new_page()
            page.route(f"{origin}/**", serve)
            page.goto(f"{origin}/")
            urls = page.evaluate("""async ([drawings, rgba]) => {
                const { Pad } = await import('/pad.js');
                return Promise.all(drawings.map(({ strokes, width }) => {
                    const pad = new Pad(document.createElement('canvas'), { widthFraction: width });
                    pad.strokes = strokes;
                    return rgba ? pad.exportCanvas().toDataURL('image/png') : pad.toDataURL();
                }));
            }""", [drawings, rgba])
        finally:
            browser.close()
    return [base64.b64decode(url.split(",", 1)[1]) for url in urls]


def drawn_canvases(n, seed=0):
    """``n`` 280x280 RGBA PNGs drawn and encoded by Pillow: a few random pen strokes each,
    black on transparent. This benchmark posted these until the frontend's own canvases
    replaced them; Pillow's encoder compresses harder than Chromium's, and its PNGs take
    longer to decode."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        im = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        for _ in range(rng.randint(1, 3)):
            points = [(rng.randint(50, 230), rng.randint(40, 240)) for _ in range(rng.randint(2, 6))]
            d.line(points, fill=(0, 0, 0, 255), width=rng.randint(14, 22), joint="curve")
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


# The PNGs a benchmark can post (--canvases): name -> function(n) returning n PNGs.
CANVASES = {"frontend": frontend_canvases, "frontend-rgba": lambda n: frontend_canvases(n, rgba=True),
            "drawn": drawn_canvases}


def predict_body(png):
    """The /predict JSON body the frontend sends (frontend/api.js): the PNG as a data URL,
    and the 28x28 preview asked for."""
    return json.dumps({"image": "data:image/png;base64," + base64.b64encode(png).decode(), "preview": True}).encode()


def http_requests(port, pngs):
    """Ready-to-send HTTP/1.1 requests: POST /predict with ``predict_body``."""
    reqs = []
    for png in pngs:
        body = predict_body(png)
        reqs.append(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % (port, len(body)) + body)
    return reqs


# ---- the load generator ---------------------------------------------------------------------

def read_response(sock):
    """Read one HTTP response; return (status, keep_alive)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    length = int(headers.get(b"content-length", b"0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside the response body")
        body += chunk
    keep = not (lines[0].startswith(b"HTTP/1.0") or headers.get(b"connection") == b"close")
    return status, keep


def client(port, reqs, start, end, offset, cpus, out):
    """One closed-loop connection: send, wait for the answer, repeat until ``end``.
    Requests sent after ``start`` are measured."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    latencies, errors, sock, i = [], 0, None, offset
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        req = reqs[i % len(reqs)]
        i += 1
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(req)
            status, keep = read_response(sock)
        except OSError:
            status, keep = 0, False
        t1 = time.monotonic()
        if t0 >= start:
            latencies.append(t1 - t0)
            errors += status != 200
        if not keep and sock is not None:
            sock.close()
            sock = None
    out.put((latencies, errors))


def load(port, pngs, concurrency, duration, warmup, server_pids, client_cpus=None):
    """Drive the server at ``concurrency`` for ``duration`` s after ``warmup`` s; return figures."""
    reqs = http_requests(port, pngs)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = time.monotonic() + warmup + 0.2
    end = start + duration
    procs = [ctx.Process(target=client, args=(port, reqs, start, end, k * 7, client_cpus, out))
             for k in range(concurrency)]
    for p in procs:
        p.start()
    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = cpu_seconds(server_pids())
    time.sleep(max(0.0, end - time.monotonic()))
    cpu1 = cpu_seconds(server_pids())
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    latencies = np.array([x for lat, _ in results for x in lat])
    n = len(latencies)
    return {
        "concurrency": concurrency, "duration_s": duration, "requests": n,
        "errors": int(sum(e for _, e in results)),
        "requests_per_s": round(n / duration, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2) if n else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2) if n else None,
        "server_cpu_ms_per_request": round((cpu1 - cpu0) / n * 1000, 3) if n else None,
    }


# ---- the server processes -------------------------------------------------------------------

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


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


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
    def __init__(self, cmd, env=None):
        self.port = free_port()
        cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        env = {**os.environ, **(env or {}), "PORT": str(self.port), "HOST": "127.0.0.1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

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


def measure_server(name, cmd, env, pngs, args, concurrencies, cold_runs, client_cpus=None):
    result = {"command": " ".join(cmd), "env": env}
    if cold_runs:
        print(f"{name}: cold start x{cold_runs} ...", flush=True)
        cold = []
        for _ in range(cold_runs):
            s = Server(cmd, env)
            try:
                cold.append(round(s.wait_first_prediction(pngs[0]), 3))
            finally:
                s.stop()
        result["cold_start_s"] = {"runs": cold, "median": statistics.median(cold), "min": min(cold)}
    if concurrencies:
        s = Server(cmd, env)
        try:
            s.wait_first_prediction(pngs[0])
            for c in concurrencies:
                print(f"{name}: concurrency {c} for {args.duration}s ...", flush=True)
                result[f"c{c}"] = load(s.port, pngs, c, args.duration, args.warmup, s.pids, client_cpus)
                print(f"  {result[f'c{c}']}", flush=True)
            result["peak_rss_mib"], result["pss_mib"] = memory_mib(s.pids())
            result["processes"] = len(s.pids())
        finally:
            s.stop()
    return result


def measure_interleaved(servers, pngs, args, concurrencies):
    """Throughput of several servers, all started at once and loaded in turn: for each
    concurrency, ``args.rounds`` rounds of one load phase per server, so the machine's
    drift (this VM's speed wanders by 1.5x within minutes) hits every server alike.
    ``servers`` maps a name to (command, env)."""
    running = {}
    try:
        for name, (cmd, env) in servers.items():
            running[name] = Server(cmd, env)
        for s in running.values():
            s.wait_first_prediction(pngs[0])
        results = {name: {"command": " ".join(cmd), "env": env} for name, (cmd, env) in servers.items()}
        for c in concurrencies:
            phases = {name: [] for name in running}
            for r in range(args.rounds):
                for name, s in running.items():
                    print(f"{name}: concurrency {c} for {args.duration}s (round {r + 1}/{args.rounds}) ...", flush=True)
                    phases[name].append(load(s.port, pngs, c, args.duration, args.warmup, s.pids))
                    print(f"  {phases[name][-1]}", flush=True)
            for name in running:
                results[name][f"c{c}"] = median_phase(phases[name])
        for name, s in running.items():
            results[name]["peak_rss_mib"], results[name]["pss_mib"] = memory_mib(s.pids())
            results[name]["processes"] = len(s.pids())
        return results
    finally:
        for s in running.values():
            s.stop()


def median_phase(phases):
    """One figure per metric from several load phases: the median, with errors and
    requests summed over all of them and every phase kept under ``rounds``."""
    out = {"concurrency": phases[0]["concurrency"], "duration_s": phases[0]["duration_s"],
           "requests": sum(p["requests"] for p in phases), "errors": sum(p["errors"] for p in phases)}
    for key in ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request"):
        out[key] = round(statistics.median(p[key] for p in phases), 3)
    out["rounds"] = phases
    return out


# ---- installed size of the serving dependencies ---------------------------------------------

def venv_size(requirements):
    """Install ``requirements`` into a fresh venv; return its size (MiB) and the biggest packages."""
    tmp = tempfile.mkdtemp(prefix="serve-deps-")
    try:
        subprocess.run([sys.executable, "-m", "venv", tmp], check=True)
        subprocess.run([f"{tmp}/bin/pip", "install", "-q", "--disable-pip-version-check", "-r", requirements],
                       check=True)
        # pip and setuptools come with every venv and are not serving dependencies
        subprocess.run([f"{tmp}/bin/pip", "uninstall", "-q", "-y", "setuptools", "pip"], check=True)
        site = subprocess.run([f"{tmp}/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
        total = du(tmp)
        packages = sorted(((name, du(os.path.join(site, name))) for name in os.listdir(site)
                           if os.path.isdir(os.path.join(site, name))), key=lambda x: -x[1])
        return {"requirements": os.path.relpath(requirements, ROOT), "venv_mib": round(total / 2**20, 1),
                "site_packages_mib": round(du(site) / 2**20, 1),
                "largest": {name: round(size / 2**20, 1) for name, size in packages[:8]}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def du(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.stat(p).st_blocks * 512
    return total


def installed_size(dist_names):
    """Size (MiB) of installed distributions and everything they require, from this
    interpreter's metadata (for the baseline, whose torch we do not reinstall)."""
    from importlib import metadata
    import re

    seen, todo, total = set(), list(dist_names), 0
    while todo:
        name = re.split(r"[ ;<>=!~\[]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or []:
            try:
                total += os.stat(f.locate()).st_blocks * 512
            except OSError:
                pass
        todo += [r for r in (dist.requires or []) if "extra ==" not in r]
    return {"distributions": sorted(seen), "mib": round(total / 2**20, 1)}


# ---- the run --------------------------------------------------------------------------------

def model_store(path):
    """A store with a model: ``path`` if it has one, else a quick model trained now."""
    if os.path.exists(os.path.join(path, "models", "LATEST")):
        return os.path.abspath(path)
    store = os.path.join(tempfile.mkdtemp(prefix="serve-bench-"), "store")
    print(f"no model in {path}; training a quick one into {store} (about a minute) ...", flush=True)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([sys.executable, "-m", "training", "--data", "bundled", "--epochs", "1",
                    "--max-train-samples", "2000", "--storage-path", os.path.join(os.path.dirname(store), "runs"),
                    "--publish", store], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return store


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.path.join(ROOT, "model-store"),
                    help="model store with the service's model (default: the repo's model-store; "
                         "a quick model is trained if it has none)")
    ap.add_argument("--duration", type=float, default=10, help="seconds measured per load phase (default 10)")
    ap.add_argument("--warmup", type=float, default=1.5, help="seconds of unmeasured load first (default 1.5)")
    ap.add_argument("--workers", type=int, default=1,
                    help="service WEB_CONCURRENCY for the main run (default 1, as deployed: one process per pod)")
    ap.add_argument("--threads", type=int, default=None,
                    help="service THREADS for the main and pinned runs (default: the service's default)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="load phases per server and concurrency, taken in turn; figures are their medians (default 3)")
    ap.add_argument("--cold-runs", type=int, default=5, help="cold starts of the service to take the median of")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=COMMAND",
                    help="another server to load in turn with the others, e.g. an older checkout: "
                         "'old=env -C ../old python -m service' (same environment as the service)")
    ap.add_argument("--canvases", choices=CANVASES, default="frontend",
                    help="the PNGs posted: 'frontend' (default) renders held-out handwriting with the page's "
                         "own pad.js in Chromium, as the frontend sends it (8-bit grey); 'frontend-rgba' is the "
                         "same drawings as the canvas's own RGBA PNG, as the frontend sent them before "
                         "frontend/png.js; 'drawn' is Pillow-drawn random strokes on transparent, as runs "
                         "before this flag posted")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--skip-deps", action="store_true", help="skip the fresh-venv install size")
    ap.add_argument("--quick", action="store_true", help="3 s phases, 1 round, 3 cold starts, no fresh venv")
    ap.add_argument("--out", default=None, help="result file (default bench/results/serve-<time>.json)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup, args.cold_runs, args.rounds, args.skip_deps = 3, 1, 3, 1, True

    store = model_store(args.store)
    described = machine.describe()  # before Chromium runs, whose exit would slow the gauge
    pngs = CANVASES[args.canvases](32)
    results = {"machine": described, "store": store, "canvases": args.canvases,
               "request": 'POST /predict {"image": "<data URL of a 280x280 PNG>", "preview": true}',
               "png_bytes_mean": round(statistics.mean(len(p) for p in pngs))}
    service_cmd = [sys.executable, "-m", "service"]
    threads = {"THREADS": str(args.threads)} if args.threads else {}
    # LOG_LEVEL info as deployed (knative/base/service.yaml): one JSON line per request, to /dev/null.
    base_env = {"MODEL_URI": store, "MODEL_POLL_SECONDS": "0", "LOG_LEVEL": "info"}

    # Throughput: the service (--workers, default one as deployed) and the original app, loaded in turn.
    servers = {"service": (service_cmd, {**base_env, "WEB_CONCURRENCY": str(args.workers), **threads})}
    if not args.skip_baseline:
        weights = os.path.join(tempfile.mkdtemp(prefix="baseline-"), "net.pt")
        subprocess.run([sys.executable, "bench/baseline_app/app.py", "--make-weights", weights], cwd=ROOT, check=True)
        baseline_cmd = [sys.executable, "bench/baseline_app/app.py", "--weights", weights, "--port", "{port}"]
        servers["baseline"] = (baseline_cmd, {})
    for spec in args.also:
        name, _, cmd = spec.partition("=")
        servers[name] = (cmd.split(), servers["service"][1])
    results.update(measure_interleaved(servers, pngs, args, [1, 8]))

    # Cold start as deployed: one worker.
    results["service"]["cold_start_s"] = measure_server(
        "service (1 worker)", service_cmd, {**base_env, "WEB_CONCURRENCY": "1"}, pngs, args, [], args.cold_runs
    )["cold_start_s"]

    # One worker on one core, the load generator on the others: the capacity of one Knative pod.
    if os.cpu_count() >= 2:
        results["service_pinned_1_core"] = measure_server(
            "service pinned to core 0", ["taskset", "-c", "0", *service_cmd],
            {**base_env, "WEB_CONCURRENCY": "1", **threads}, pngs, args, [1, 2, 4, 8], 0,
            client_cpus=set(range(1, os.cpu_count())))

    if not args.skip_baseline:
        results["baseline"]["cold_start_s"] = measure_server(
            "baseline", baseline_cmd, {}, pngs, args, [], max(1, min(3, args.cold_runs)))["cold_start_s"]
        s, b = results["service"], results["baseline"]
        results["ratios"] = {
            "requests_per_s_c1": round(s["c1"]["requests_per_s"] / b["c1"]["requests_per_s"], 2),
            "requests_per_s_c8": round(s["c8"]["requests_per_s"] / b["c8"]["requests_per_s"], 2),
            "cold_start": round(b["cold_start_s"]["median"] / s["cold_start_s"]["median"], 1),
            "cpu_per_request_c8": round(b["c8"]["server_cpu_ms_per_request"] / s["c8"]["server_cpu_ms_per_request"], 2),
            "peak_rss": round(b["peak_rss_mib"] / s["peak_rss_mib"], 2),
        }
        results["baseline_dependencies"] = installed_size(["torch", "flask", "pillow", "numpy"])

    if not args.skip_deps:
        print("installing service/requirements.txt into a fresh venv ...", flush=True)
        results["service_dependencies"] = venv_size(os.path.join(ROOT, "service", "requirements.txt"))

    s = results["service"]
    results["targets"] = {
        "cold_start_s <= 0.5": s["cold_start_s"]["median"] <= TARGETS["cold_start_s"],
        "p99_ms_c8 <= 25": s["c8"]["p99_ms"] <= TARGETS["p99_ms_c8"],
        "zero errors": s["c1"]["errors"] == s["c8"]["errors"] == 0,
        "server_cpu_ms_per_request <= 1.5": s["c8"]["server_cpu_ms_per_request"] <= TARGETS["cpu_ms_per_request"],
    }
    if "ratios" in results:
        results["targets"][">= 3x baseline requests/s (c8)"] = results["ratios"]["requests_per_s_c8"] >= 3
    results["machine"]["load_average_end"] = os.getloadavg()

    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("serve-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(summary(results))
    print(f"results: {out}")


def summary(r):
    rows = [("", "service", "baseline")]
    s, b = r["service"], r.get("baseline", {})

    def get(d, *keys):
        for k in keys:
            d = d.get(k) if isinstance(d, dict) else None
        return "-" if d is None else d

    rows += [("cold start (median s)", get(s, "cold_start_s", "median"), get(b, "cold_start_s", "median"))]
    for c in (1, 8):
        for key in ("requests_per_s", "p50_ms", "p99_ms", "errors", "server_cpu_ms_per_request"):
            rows.append((f"c{c} {key}", get(s, f"c{c}", key), get(b, f"c{c}", key)))
    rows += [("peak RSS MiB", get(s, "peak_rss_mib"), get(b, "peak_rss_mib")),
             ("deps MiB", get(r, "service_dependencies", "venv_mib"), get(r, "baseline_dependencies", "mib"))]
    text = "\n".join(f"{a:34s} {str(x):>12s} {str(y):>12s}" for a, x, y in rows)
    if "service_pinned_1_core" in r:
        p = r["service_pinned_1_core"]
        text += "\n\none worker pinned to one core:\n" + "\n".join(
            f"  c{c}: {p[f'c{c}']['requests_per_s']} req/s, p50 {p[f'c{c}']['p50_ms']} ms, "
            f"p99 {p[f'c{c}']['p99_ms']} ms, errors {p[f'c{c}']['errors']}, "
            f"cpu {p[f'c{c}']['server_cpu_ms_per_request']} ms/req" for c in (1, 2, 4, 8))
    for name, o in r.items():  # servers added with --also
        if isinstance(o, dict) and "c8" in o and name not in ("service", "baseline", "service_pinned_1_core"):
            text += "\n" + name + ": " + "; ".join(
                f"c{c} {o[f'c{c}']['requests_per_s']} req/s, p99 {o[f'c{c}']['p99_ms']} ms, "
                f"cpu {o[f'c{c}']['server_cpu_ms_per_request']} ms/req" for c in (1, 8))
    if "ratios" in r:
        text += "\n\nratios (service / baseline): " + json.dumps(r["ratios"])
    text += "\ntargets: " + json.dumps(r["targets"])
    return text


if __name__ == "__main__":
    main()
