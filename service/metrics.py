"""Prometheus metrics for the whole server, shared by every worker process.

The numbers live in an anonymous shared memory map made before the server forks its
workers. Each worker writes only to its own slot and /metrics adds the slots up, so
whichever worker answers a scrape reports the totals of the whole server, and a worker
that replaces a dead one takes over its slot and keeps counting from there.

Why not prometheus_client: its multiprocess mode needs a writable directory shared by
the workers and cleanup hooks, and the import costs about 15 ms of every cold start.
What we need (counters and fixed-bucket histograms over a fixed set of routes) is a
few arrays.
"""
import bisect
import mmap
import multiprocessing
import os
import threading

import numpy as np

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
STATUSES = (200, 204, 304, 400, 404, 405, 413, 415, 422, 500, 503)  # others count as "other"
UNMATCHED = "<unmatched>"
VERSION_BYTES = 256


class Metrics:
    def __init__(self, routes, slots=1):
        self.routes = list(routes) + [UNMATCHED]
        self.route_index = {r: i for i, r in enumerate(self.routes)}
        self.status_index = {s: i for i, s in enumerate(STATUSES)}
        self.slots = slots
        n_routes, n_status = len(self.routes), len(STATUSES) + 1
        shapes = {  # per slot
            "requests": (n_routes, n_status),
            "latency_buckets": (n_routes, len(LATENCY_BUCKETS) + 1),
            "latency_sum": (n_routes,),
            "inference_buckets": (len(INFERENCE_BUCKETS) + 1,),
            "inference_sum": (1,),
            "images": (1,),
            "model_loads": (2,),  # ok, refused
            "pid": (1,),
        }
        sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
        per_slot = sum(sizes.values())
        self._mm = mmap.mmap(-1, slots * (per_slot * 8 + VERSION_BYTES))  # anonymous, MAP_SHARED
        floats = np.frombuffer(self._mm, dtype=np.float64, count=slots * per_slot).reshape(slots, per_slot)
        self._versions = np.frombuffer(self._mm, dtype=np.uint8, offset=slots * per_slot * 8).reshape(slots, -1)
        self._arrays, offset = {}, 0
        for k, shape in shapes.items():
            self._arrays[k] = floats[:, offset:offset + sizes[k]].reshape((slots,) + shape)
            offset += sizes[k]
        self._lock = threading.Lock()
        self._claim_lock = multiprocessing.Lock()  # shared by the forked workers
        self.use_slot(0)

    def claim_slot(self):
        """Call in each worker after fork: take a slot no live process holds (a worker that
        replaces a dead one takes over its slot and keeps counting from there)."""
        # A worker killed while holding the lock would hold it forever; never wait long.
        locked = self._claim_lock.acquire(timeout=2)
        try:
            self.use_slot(min(set(range(self.slots)) - set(self._live_slots()), default=0))
        finally:
            if locked:
                self._claim_lock.release()

    def use_slot(self, slot):
        """This process writes to ``slot`` from now on."""
        self.slot = slot
        self._a = {k: v[slot] for k, v in self._arrays.items()}
        self._a["pid"][0] = os.getpid()
        self._lock = threading.Lock()  # a lock held at fork time would stay held in the child

    def observe_request(self, route, status, seconds):
        r = self.route_index.get(route, len(self.routes) - 1)
        s = self.status_index.get(status, len(STATUSES))
        b = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        a = self._a
        with self._lock:
            a["requests"][r, s] += 1
            a["latency_buckets"][r, b] += 1
            a["latency_sum"][r] += seconds

    def observe_inference(self, seconds, images):
        a = self._a
        with self._lock:
            a["inference_buckets"][bisect.bisect_left(INFERENCE_BUCKETS, seconds)] += 1
            a["inference_sum"][0] += seconds
            a["images"][0] += images

    def model_event(self, result, version):
        with self._lock:
            self._a["model_loads"][0 if result == "ok" else 1] += 1
            if result == "ok":
                raw = version.encode()[:VERSION_BYTES - 1]
                row = self._versions[self.slot]
                row[:] = 0
                row[:len(raw)] = np.frombuffer(raw, np.uint8)

    def _live_slots(self):
        live = []
        for slot in range(self.slots):
            pid = int(self._arrays["pid"][slot, 0])
            if pid == 0:
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            live.append(slot)
        return live

    def render(self):
        """The Prometheus text exposition (format 0.0.4) of all slots together."""
        total = {k: v.sum(axis=0) for k, v in self._arrays.items() if k != "pid"}
        out = ["# HELP digitdraw_requests_total HTTP requests by route and status.",
               "# TYPE digitdraw_requests_total counter"]
        statuses = [str(s) for s in STATUSES] + ["other"]
        for r, route in enumerate(self.routes):
            for s, status in enumerate(statuses):
                if total["requests"][r, s]:
                    out.append(f'digitdraw_requests_total{{route="{route}",status="{status}"}} '
                               f'{total["requests"][r, s]:.0f}')
        out += ["# HELP digitdraw_request_duration_seconds Time to handle a request, by route.",
                "# TYPE digitdraw_request_duration_seconds histogram"]
        for r, route in enumerate(self.routes):
            count = total["latency_buckets"][r].sum()
            if count:
                out += _histogram("digitdraw_request_duration_seconds", f'route="{route}",', LATENCY_BUCKETS,
                                  total["latency_buckets"][r], total["latency_sum"][r])
        out += ["# HELP digitdraw_inference_duration_seconds Time ONNX Runtime took per batch.",
                "# TYPE digitdraw_inference_duration_seconds histogram"]
        out += _histogram("digitdraw_inference_duration_seconds", "", INFERENCE_BUCKETS,
                          total["inference_buckets"], total["inference_sum"][0])
        out += ["# HELP digitdraw_images_total Images classified.", "# TYPE digitdraw_images_total counter",
                f'digitdraw_images_total {total["images"][0]:.0f}',
                "# HELP digitdraw_model_loads_total Models loaded (ok) or refused by verification.",
                "# TYPE digitdraw_model_loads_total counter",
                f'digitdraw_model_loads_total{{result="ok"}} {total["model_loads"][0]:.0f}',
                f'digitdraw_model_loads_total{{result="refused"}} {total["model_loads"][1]:.0f}',
                "# HELP digitdraw_model_info The model version each worker serves (1 per worker).",
                "# TYPE digitdraw_model_info gauge"]
        for slot in self._live_slots():
            version = bytes(self._versions[slot]).rstrip(b"\0").decode(errors="replace")
            if version:
                out.append(f'digitdraw_model_info{{version="{_escape(version)}",worker="{slot}"}} 1')
        return "\n".join(out) + "\n"


def _histogram(name, labels, bounds, counts, total):
    lines, cumulative = [], 0
    for bound, count in zip(bounds, counts):
        cumulative += count
        lines.append(f'{name}_bucket{{{labels}le="{bound}"}} {cumulative:.0f}')
    cumulative += counts[-1]
    lines.append(f'{name}_bucket{{{labels}le="+Inf"}} {cumulative:.0f}')
    labels = labels.rstrip(",")
    lines.append(f"{name}_sum{{{labels}}} {total:.6f}" if labels else f"{name}_sum {total:.6f}")
    lines.append(f"{name}_count{{{labels}}} {cumulative:.0f}" if labels else f"{name}_count {cumulative:.0f}")
    return lines


def _escape(value):
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
