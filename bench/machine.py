"""What the benchmarks ran on, for their result files.

The development machine is a VM whose speed changes with its host's load: the same
command measured 30-40% slower in the afternoon than in the morning of one day. So each
result records ``python_loop_s``, the time of a fixed pure-Python loop, taken at the
start: compare absolute figures only between runs with a similar value, and ratios
(ours vs the baseline, measured in the same run) at any time.
"""
import os
import platform
import time


def python_loop_seconds(n=10_000_000):
    """Seconds for a fixed pure-Python loop: a rough speed gauge of one core (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t, s = time.perf_counter(), 0
        for i in range(n):
            s += i
        best = min(best, time.perf_counter() - t)
    return round(best, 3)


def describe(gauge=True):
    """The machine, with the ``python_loop_s`` speed gauge (about 1.5 s to take) unless
    ``gauge`` is False: results that do not depend on speed, like accuracy, skip it."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average": os.getloadavg()}
    if gauge:
        info["python_loop_s"] = python_loop_seconds()
    return info
