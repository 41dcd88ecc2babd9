"""The costliest requests the service accepts, against a typical one, and liveness under each attack.

One `python -m service` as deployed (WEB_CONCURRENCY=1, THREADS=1). For each case it sends
the request ``--repeat`` times, one after another, and reads the server's CPU time per
request from /proc; the ratio to the page's own request (a 280x280 canvas, preview asked
for) is the figure to read. While each case is sent back to back from another thread, it
times GET /healthz: what a Knative liveness probe would see. The cases:

- typical: the frontend's canvas (bench/canvases.py);
- the largest accepted images: 440x440 RGBA noise (about 1 MB of body, at its limit), a
  512x512 16-bit PNG, a 256x256 progressive JPEG of noise (progressive counts 4x), a
  1024x256 grey PNG;
- batches: 64 of the page's canvases, and the largest accepted, 64 RGBA canvases of 320x320
  (MAX_BATCH_PIXELS);
- refused before decoding: 64 PNGs of 1 x 4,194,304 pixels, and a 64-image batch of
  512x512 images (over the batch's pixels);
- the Open Inference Protocol: 64 inputs with the output named 5,000 times (refused: each
  output may be named once), and 64 inputs sent and answered as binary tensor data (the
  KServe and Triton clients' default);
- stalled uploads: three connections that send their headers and stop (only liveness);
- idle connections: 1,030 (more than Granian's default limit), half silent and half stuck in
  their headers, reopened as the server closes them (only liveness).

    python -m bench.worst_case --store model-store

Results go to bench/results/worst-<UTC time>.json.
"""
import argparse
import base64
import io
import json
import os
import selectors
import socket
import statistics
import threading
import time
import urllib.request

import numpy as np
from PIL import Image, ImageDraw

from bench import ROOT, machine
from bench.canvases import CANVASES
from bench.load import cpu_seconds, predict_body
from bench.servers import service
from service import png

DEPLOYED = {"WEB_CONCURRENCY": "1", "THREADS": "1", "LOG_LEVEL": "info"}


def encode(im, fmt="PNG", **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def drawing(size, mode="RGBA"):
    im = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    ImageDraw.Draw(im).ellipse([size * 0.3, size * 0.15, size * 0.7, size * 0.85], outline=(0, 0, 0, 255),
                               width=max(2, size // 14))
    return im if mode == "RGBA" else im.convert(mode)


def batch_body(pngs):
    return json.dumps({"images": ["data:image/png;base64," + base64.b64encode(p).decode() for p in pngs]}).encode()


OIP = "/v2/models/digitdraw/infer"


def oip_json(n, repeats):
    """``n`` blank inputs as JSON, the logits output named ``repeats`` times."""
    return json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [n, 1, 28, 28],
                                   "data": [0] * (n * 784)}],
                       "outputs": [{"name": "logits"}] * repeats}).encode()


def oip_binary(n):
    """``n`` inputs as binary tensor data, the reply asked for as binary data too."""
    x = np.random.default_rng(1).random((n, 1, 28, 28), dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return OIP, head + x.tobytes(), {"Content-Type": "application/octet-stream",
                                     "Inference-Header-Content-Length": str(len(head))}


def cases(typical):
    rng = np.random.default_rng(0)
    noise = lambda shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    return {
        "typical: the page's canvas": predict_body(typical),
        "440x440 RGBA noise PNG (at the body limit)": predict_body(
            encode(Image.fromarray(noise((440, 440, 4)), "RGBA"))),
        "512x512 16-bit PNG": predict_body(encode(drawing(512, "L").convert("I;16"))),
        "256x256 progressive JPEG of noise": predict_body(
            encode(Image.fromarray(noise((256, 256, 3)), "RGB"), "JPEG", progressive=True, quality=95)),
        "1024x256 grey PNG": predict_body(encode(drawing(1024, "L").resize((1024, 256)))),
        "batch of 64 of the page's canvases": batch_body([typical] * 64),
        "batch of 64 RGBA 320x320 canvases": batch_body([encode(drawing(320))] * 64),
        "batch of 64 1x4194304 PNGs (refused)": batch_body([png.grey(np.zeros((1, 4_194_304), np.uint8), 9)] * 64),
        "batch of 64 512x512 images (refused)": batch_body([encode(drawing(512))] * 64),
        "OIP: 64 inputs, the output named 5,000 times (refused)": (OIP, oip_json(64, 5000), JSON),
        "OIP: 64 inputs, binary tensor data both ways": oip_binary(64),
    }


JSON = {"Content-Type": "application/json"}


def post(url, request):
    """The status of ``request``: a /predict JSON body, or (path, body, headers)."""
    path, body, headers = request if isinstance(request, tuple) else ("/predict", request, JSON)
    req = urllib.request.Request(url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def healthz_ms(url, n=20):
    times = []
    for _ in range(n):
        t = time.monotonic()
        with urllib.request.urlopen(url + "/healthz", timeout=10):
            pass
        times.append((time.monotonic() - t) * 1000)
        time.sleep(0.02)
    return {"p50": round(statistics.median(times), 2), "max": round(max(times), 2)}


def measure(server, body, repeat):
    """(status, server CPU ms per request, wall ms per request)."""
    post(server.url, body)  # warm
    cpu0, t0 = cpu_seconds(server.pids()), time.monotonic()
    statuses = {post(server.url, body) for _ in range(repeat)}
    cpu, wall = cpu_seconds(server.pids()) - cpu0, time.monotonic() - t0
    return sorted(statuses), round(cpu / repeat * 1000, 3), round(wall / repeat * 1000, 3)


def under_attack(server, attack):
    """Liveness timings while ``attack()`` runs again and again in another thread."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            attack()

    t = threading.Thread(target=loop)
    t.start()
    try:
        time.sleep(0.2)
        return healthz_ms(server.url)
    finally:
        stop.set()
        t.join()


def stalled_uploads(port, n=3):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000"
                  b"\r\n\r\n{\"image\": \"")
        socks.append(s)
    return socks


def idle_connections(server, n):
    """Liveness timings while ``n`` connections, half silent and half stuck in their
    headers, are held open and reopened as the server closes them, until the server has
    closed ``n`` of them (a whole round of READ_TIMEOUT_SECONDS)."""
    selector, closed = selectors.DefaultSelector(), [0]

    def open_one(i):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)

    for i in range(n):
        open_one(i)
    stop = threading.Event()

    def reopen():
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
                    closed[0] += 1
                    open_one(key.data)

    t = threading.Thread(target=reopen)
    t.start()
    times = []
    try:
        while closed[0] < n:
            started = time.monotonic()
            with urllib.request.urlopen(server.url + "/healthz", timeout=30):
                pass
            times.append((time.monotonic() - started) * 1000)
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
        for key in list(selector.get_map().values()):
            key.fileobj.close()
    return {"p50": round(statistics.median(times), 2), "max": round(max(times), 2), "probes": len(times)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.path.join(ROOT, "model-store"), help="model store (default model-store)")
    ap.add_argument("--repeat", type=int, default=100,
                    help="requests per case (default 100: /proc counts CPU in 10 ms ticks)")
    ap.add_argument("--out", default=None, help="result file (default bench/results/worst-<time>.json)")
    args = ap.parse_args()

    described = machine.describe()
    typical = CANVASES["frontend"](1)[0]
    bodies = cases(typical)
    server = service(os.path.abspath(args.store), **DEPLOYED).wait_ready()
    results = {"machine": described, "settings": DEPLOYED, "repeat": args.repeat, "cases": {}}
    try:
        quiet = healthz_ms(server.url)
        results["healthz_ms_idle"] = quiet
        for name, body in bodies.items():
            size = len(body[1] if isinstance(body, tuple) else body)
            statuses, cpu_ms, wall_ms = measure(server, body, args.repeat)
            live = under_attack(server, lambda body=body: post(server.url, body))
            results["cases"][name] = {"status": statuses, "body_bytes": size, "server_cpu_ms": cpu_ms,
                                      "wall_ms": wall_ms, "healthz_ms_meanwhile": live}
            print(f"{name:42s} {str(statuses):10s} {size:9,d} B  cpu {cpu_ms:8.2f} ms  wall {wall_ms:8.2f} ms"
                  f"  healthz p50 {live['p50']} max {live['max']} ms", flush=True)
        socks = stalled_uploads(server.port)
        try:
            results["cases"]["3 stalled uploads"] = {"healthz_ms_meanwhile": healthz_ms(server.url)}
        finally:
            for s in socks:
                s.close()
        print(f"{'3 stalled uploads':42s} healthz {results['cases']['3 stalled uploads']['healthz_ms_meanwhile']}")
        results["cases"]["1,030 idle connections"] = {"healthz_ms_meanwhile": idle_connections(server, 1030)}
        print(f"{'1,030 idle connections':42s} healthz {results['cases']['1,030 idle connections']['healthz_ms_meanwhile']}")
    finally:
        server.stop()
    typical_cpu = results["cases"]["typical: the page's canvas"]["server_cpu_ms"]
    accepted = {k: v for k, v in results["cases"].items() if v.get("status") == [200]}
    results["worst_accepted"] = max(accepted, key=lambda k: accepted[k]["server_cpu_ms"])
    results["worst_single_accepted"] = max((k for k in accepted if "batch" not in k and "64 inputs" not in k),
                                           key=lambda k: accepted[k]["server_cpu_ms"])
    results["worst_single_accepted_over_typical"] = round(
        accepted[results["worst_single_accepted"]]["server_cpu_ms"] / typical_cpu, 1)
    typical_batch = results["cases"]["batch of 64 of the page's canvases"]["server_cpu_ms"]
    results["worst_accepted_over_typical_batch"] = round(accepted[results["worst_accepted"]]["server_cpu_ms"]
                                                         / typical_batch, 1)
    results["healthz_ms_max_under_any_attack"] = max(v["healthz_ms_meanwhile"]["max"]
                                                     for v in results["cases"].values())
    print(f"worst accepted single image: {results['worst_single_accepted']} "
          f"({results['worst_single_accepted_over_typical']}x the typical request's CPU); worst request: "
          f"{results['worst_accepted']} ({results['worst_accepted_over_typical_batch']}x a batch of the page's); "
          f"healthz at most {results['healthz_ms_max_under_any_attack']} ms under any attack")
    out = args.out or os.path.join(ROOT, "bench", "results", time.strftime("worst-%Y%m%dT%H%M%SZ.json", time.gmtime()))
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
