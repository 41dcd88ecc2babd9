"""Prometheus metrics for the whole server, shared by every worker process, split by model version.

The numbers live in an anonymous shared memory map made before the server forks its
workers. Each worker writes only to its own slot and /metrics adds the slots up, so
whichever worker answers a scrape reports the totals of the whole server, and a worker
that replaces a dead one takes over its slot and keeps counting from there.

Every count that can be told apart by model carries ``model_version``, so two versions
(a canary and the stable one) can be compared from one Prometheus. A slot has rows of its
own for SERVED_ROWS versions this worker served, and NAMED_ROWS for versions that only a
feedback request named (the prediction came from another revision, as in a canary split).
A feedback request may only name a version the model store holds (service/feedback.py);
anything else counts as "unknown", and a version past its rows as "other". So no client
can take the row of a version this worker serves, or label a count with a name it made up.
Rows are never reused, so no counter ever goes down: a worker lives through a handful of
hot swaps.

Why not prometheus_client: its multiprocess mode needs a writable directory shared by the
workers and cleanup hooks, and its import costs about 60 ms of a 0.35 s cold start. What we
need (counters and fixed-bucket histograms over fixed routes) is a few arrays.
"""
import bisect
import mmap
import multiprocessing
import os
import threading

import numpy as np

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
STATUSES = (200, 201, 204, 304, 400, 404, 405, 408, 413, 415, 422, 429, 500, 503)  # others count as "other"
FEEDBACK_RESULTS = ("stored", "duplicate", "rejected", "rate_limited")
UNMATCHED = "<unmatched>"
SERVED_ROWS = 6     # rows per worker slot for the versions it served (and "none", before any model)
NAMED_ROWS = 4      # rows per worker slot for versions only feedback named
UNKNOWN, OTHER, NONE = "unknown", "other", "none"  # versions the store does not hold; past the rows; before any model
UNKNOWN_ROW = SERVED_ROWS + NAMED_ROWS
OTHER_ROW = UNKNOWN_ROW + 1
ROWS = OTHER_ROW + 1
NAME_BYTES = 128


class Metrics:
    def __init__(self, routes, slots=1):
        self.routes = list(routes) + [UNMATCHED]
        self.route_index = {r: i for i, r in enumerate(self.routes)}
        self.status_index = {s: i for i, s in enumerate(STATUSES)}
        self.slots = slots
        n_routes, n_status = len(self.routes), len(STATUSES) + 1
        shapes = {  # per slot and version row
            "requests": (n_routes, n_status),
            "latency_buckets": (n_routes, len(LATENCY_BUCKETS) + 1),
            "latency_sum": (n_routes,),
            "inference_buckets": (len(INFERENCE_BUCKETS) + 1,),
            "inference_sum": (1,),
            "predictions": (1,),
            "confidence_buckets": (len(CONFIDENCE_BUCKETS) + 1,),
            "confidence_sum": (1,),
            "empty_canvas": (1,),
            "feedback": (len(FEEDBACK_RESULTS),),
            "corrections": (1,),
        }
        per_slot_shapes = {"model_loads": (2,), "pid": (1,), "current": (1,)}  # loads: ok, refused
        sizes = {k: int(np.prod(s)) for k, s in {**shapes, **per_slot_shapes}.items()}
        per_row = sum(sizes[k] for k in shapes)
        per_slot = ROWS * per_row + sum(sizes[k] for k in per_slot_shapes)
        self._mm = mmap.mmap(-1, slots * (per_slot * 8 + ROWS * NAME_BYTES))  # anonymous, MAP_SHARED
        floats = np.frombuffer(self._mm, dtype=np.float64, count=slots * per_slot).reshape(slots, per_slot)
        self._names = np.frombuffer(self._mm, dtype=np.uint8, offset=slots * per_slot * 8).reshape(
            slots, ROWS, NAME_BYTES)
        rows = floats[:, :ROWS * per_row].reshape(slots, ROWS, per_row)
        self._arrays, offset = {}, 0
        for k, shape in shapes.items():  # [slot, row, ...]
            self._arrays[k] = rows[:, :, offset:offset + sizes[k]].reshape((slots, ROWS) + shape)
            offset += sizes[k]
        self._slot_arrays, offset = {}, ROWS * per_row
        for k, shape in per_slot_shapes.items():  # [slot, ...]
            self._slot_arrays[k] = floats[:, offset:offset + sizes[k]].reshape((slots,) + shape)
            offset += sizes[k]
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
        self._slot_arrays["pid"][slot, 0] = os.getpid()
        self._lock = threading.Lock()  # a lock held at fork time would stay held in the child
        self._rows = {self._name(slot, r): r for r in range(ROWS) if self._name(slot, r)}
        self._current = int(self._slot_arrays["current"][slot, 0])
        if not self._rows:
            self._current = self._row(NONE)

    def _name(self, slot, row):
        return bytes(self._names[slot, row]).rstrip(b"\0").decode(errors="replace")

    def _row(self, version, named=False):
        """This slot's row for ``version``, taking a free one if it has none: among the served
        rows, or with ``named`` (a version only a client named) among the named ones. Call
        with the lock."""
        row = self._rows.get(version)
        if row is None:
            if version == UNKNOWN:
                row = UNKNOWN_ROW
            else:
                first, end = (SERVED_ROWS, UNKNOWN_ROW) if named else (0, SERVED_ROWS)
                row = next((r for r in range(first, end) if not self._names[self.slot, r, 0]), OTHER_ROW)
                if row == OTHER_ROW:
                    version = OTHER
            raw = version.encode()[:NAME_BYTES]
            self._names[self.slot, row, :len(raw)] = np.frombuffer(raw, np.uint8)
            self._rows[version] = row
        return row

    def _version_row(self, version):
        return self._current if version is None else self._row(version)

    def observe_request(self, route, status, seconds, version=None):
        """One request, counted under ``version`` (default: the model this worker serves)."""
        r = self.route_index.get(route, len(self.routes) - 1)
        s = self.status_index.get(status, len(STATUSES))
        b = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        a, slot = self._arrays, self.slot
        with self._lock:
            v = self._version_row(version)
            a["requests"][slot, v, r, s] += 1
            a["latency_buckets"][slot, v, r, b] += 1
            a["latency_sum"][slot, v, r] += seconds

    def observe_inference(self, seconds, version):
        a, slot = self._arrays, self.slot
        with self._lock:
            v = self._row(version)
            a["inference_buckets"][slot, v, bisect.bisect_left(INFERENCE_BUCKETS, seconds)] += 1
            a["inference_sum"][slot, v, 0] += seconds

    def observe_predictions(self, confidences, version):
        """One prediction per confidence (the top probability) made by ``version``."""
        a, slot = self._arrays, self.slot
        with self._lock:
            v = self._row(version)
            for c in confidences:
                a["confidence_buckets"][slot, v, bisect.bisect_left(CONFIDENCE_BUCKETS, c)] += 1
            a["confidence_sum"][slot, v, 0] += sum(confidences)
            a["predictions"][slot, v, 0] += len(confidences)

    def observe_empty_canvas(self, version):
        with self._lock:
            self._arrays["empty_canvas"][self.slot, self._row(version), 0] += 1

    def observe_feedback(self, result, version, correction=False):
        """A feedback request's ``result`` (FEEDBACK_RESULTS), about a prediction by ``version``:
        a version the store holds, UNKNOWN, or None (none named: counted under the version
        this worker serves); ``correction`` when its label differs from the prediction."""
        a, slot = self._arrays, self.slot
        with self._lock:
            v = self._current if version is None else self._row(version, named=True)
            a["feedback"][slot, v, FEEDBACK_RESULTS.index(result)] += 1
            if correction:
                a["corrections"][slot, v, 0] += 1

    def model_event(self, result, version):
        """A model load: "ok" (``version`` now serves here) or "refused"."""
        with self._lock:
            self._slot_arrays["model_loads"][self.slot, 0 if result == "ok" else 1] += 1
            if result == "ok":
                self._current = self._row(version)
                self._slot_arrays["current"][self.slot, 0] = self._current

    def _live_slots(self):
        live = []
        for slot in range(self.slots):
            pid = int(self._slot_arrays["pid"][slot, 0])
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

    def _by_version(self):
        """{version: {metric: array summed over every slot's row of that version}}."""
        out = {}
        for slot in range(self.slots):
            for row in range(ROWS):
                name = self._name(slot, row)
                if name:
                    sums = out.setdefault(name, {k: 0 for k in self._arrays})
                    for k, a in self._arrays.items():
                        sums[k] = sums[k] + a[slot, row]
        return out

    def render(self, mode=None):
        """The Prometheus text exposition (format 0.0.4) of all slots together. ``mode`` (how
        this server chooses its model: following or pinned) labels digitdraw_model_info."""
        versions = self._by_version()
        statuses = [str(s) for s in STATUSES] + ["other"]
        out = ["# HELP digitdraw_requests_total HTTP requests by route, status and the model serving them.",
               "# TYPE digitdraw_requests_total counter"]
        for v, m in versions.items():
            for r, route in enumerate(self.routes):
                for s, status in enumerate(statuses):
                    if m["requests"][r, s]:
                        out.append(f'digitdraw_requests_total{{route="{route}",status="{status}",'
                                   f'model_version="{_escape(v)}"}} {m["requests"][r, s]:.0f}')
        out += ["# HELP digitdraw_request_duration_seconds Time to handle a request, by route.",
                "# TYPE digitdraw_request_duration_seconds histogram"]
        for v, m in versions.items():
            for r, route in enumerate(self.routes):
                if m["latency_buckets"][r].sum():
                    out += _histogram("digitdraw_request_duration_seconds",
                                      f'route="{route}",model_version="{_escape(v)}",', LATENCY_BUCKETS,
                                      m["latency_buckets"][r], m["latency_sum"][r])
        out += ["# HELP digitdraw_inference_duration_seconds Time ONNX Runtime took per batch.",
                "# TYPE digitdraw_inference_duration_seconds histogram"]
        for v, m in versions.items():
            if m["inference_buckets"].sum():
                out += _histogram("digitdraw_inference_duration_seconds", f'model_version="{_escape(v)}",',
                                  INFERENCE_BUCKETS, m["inference_buckets"], m["inference_sum"][0])
        out += ["# HELP digitdraw_prediction_confidence The top probability of each prediction.",
                "# TYPE digitdraw_prediction_confidence histogram"]
        for v, m in versions.items():
            if m["predictions"][0]:
                out += _histogram("digitdraw_prediction_confidence", f'model_version="{_escape(v)}",',
                                  CONFIDENCE_BUCKETS, m["confidence_buckets"], m["confidence_sum"][0])
        for name, key, text in (("predictions", "predictions", "Images classified."),
                                ("empty_canvas", "empty_canvas", "Drawings sent with no ink (422)."),
                                ("corrections", "corrections", "Feedback whose label differs from the prediction.")):
            out += [f"# HELP digitdraw_{name}_total {text}", f"# TYPE digitdraw_{name}_total counter"]
            out += [f'digitdraw_{name}_total{{model_version="{_escape(v)}"}} {m[key][0]:.0f}'
                    for v, m in versions.items() if m[key][0]]
        out += ["# HELP digitdraw_feedback_total Feedback requests by result.",
                "# TYPE digitdraw_feedback_total counter"]
        out += [f'digitdraw_feedback_total{{result="{result}",model_version="{_escape(v)}"}} {m["feedback"][i]:.0f}'
                for v, m in versions.items() for i, result in enumerate(FEEDBACK_RESULTS) if m["feedback"][i]]
        loads = self._slot_arrays["model_loads"].sum(axis=0)
        out += ["# HELP digitdraw_model_loads_total Models loaded (ok) or refused by verification.",
                "# TYPE digitdraw_model_loads_total counter",
                f'digitdraw_model_loads_total{{result="ok"}} {loads[0]:.0f}',
                f'digitdraw_model_loads_total{{result="refused"}} {loads[1]:.0f}',
                "# HELP digitdraw_model_info The model version each worker serves (1 per worker).",
                "# TYPE digitdraw_model_info gauge"]
        mode_label = f',mode="{mode}"' if mode else ""
        for slot in self._live_slots():
            version = self._name(slot, int(self._slot_arrays["current"][slot, 0]))
            if version and version != NONE:
                out.append(f'digitdraw_model_info{{version="{_escape(version)}",worker="{slot}"{mode_label}}} 1')
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
