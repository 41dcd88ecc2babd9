"""The load generator: one client process per connection, raw sockets, keep-alive.

``load`` drives a server at a concurrency for a while and returns requests/s, p50/p99
latency, errors and the server's CPU time per request (from /proc, over the same window).
"""
import base64
import json
import multiprocessing as mp
import os
import socket
import time

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


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
