"""Serving benchmark: the prediction service against the original app, in the same run.

For each server (service: `python -m service`; baseline: bench/baseline_app, the
original Flask-dev-server + torch app) it measures:
  - cold start: process launch -> first 200 on POST /predict, model on local disk;
  - throughput posting 280x280 canvas PNGs as JSON data URLs with the preview asked for,
    as the frontend sends them (bench/canvases.py), at concurrency 1 and 8, with one load
    generator for both (bench/load.py); requests/s, p50/p99 latency and errors. Both servers run at once and
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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench import deps, machine
from bench.canvases import CANVASES
from bench.load import load
from bench import ROOT
from bench.servers import SERVICE, Server, memory_mib
from training.trainer import LOCAL_RAY_ENV

TARGETS = {"throughput_ratio_c8": 3.0, "p99_ms_c8": 25.0, "errors": 0, "cpu_ms_per_request": 1.5,
           "cold_start_s": 0.5}


def cold_starts(servers, png, runs):
    """Launch -> first 200 on POST /predict, ``runs`` times for each of ``servers`` (name ->
    (command, env)), taking turns so the machine's drift hits each alike."""
    times = {name: [] for name in servers}
    for k in range(runs):
        for name, (cmd, env) in servers.items():
            print(f"{name}: cold start {k + 1}/{runs} ...", flush=True)
            s = Server(cmd, env)
            try:
                times[name].append(round(s.wait_first_prediction(png), 3))
            finally:
                s.stop()
    return {name: {"runs": t, "median": statistics.median(t), "min": min(t)} for name, t in times.items()}


def measure_server(name, cmd, env, pngs, args, concurrencies, client_cpus=None):
    result = {"command": " ".join(cmd), "env": env}
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


# ---- the run --------------------------------------------------------------------------------

def model_store(path):
    """A store with a model: ``path`` if it has one, else a quick model trained now."""
    if os.path.exists(os.path.join(path, "models", "LATEST")):
        return os.path.abspath(path)
    store = os.path.join(tempfile.mkdtemp(prefix="serve-bench-"), "store")
    print(f"no model in {path}; training a quick one into {store} (about a minute) ...", flush=True)
    env = {**os.environ, **LOCAL_RAY_ENV}
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
    service_cmd = SERVICE
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

    # Cold start as deployed, one worker, taking turns with the --also servers.
    cold = {"service": (service_cmd, {**base_env, "WEB_CONCURRENCY": "1"})}
    cold.update((name, (servers[name][0], cold["service"][1])) for name in servers if name not in ("service", "baseline"))
    for name, figures in cold_starts(cold, pngs[0], args.cold_runs).items():
        results[name]["cold_start_s"] = figures

    # One worker on one core, the load generator on the others: the capacity of one Knative pod.
    if os.cpu_count() >= 2:
        results["service_pinned_1_core"] = measure_server(
            "service pinned to core 0", ["taskset", "-c", "0", *service_cmd],
            {**base_env, "WEB_CONCURRENCY": "1", **threads}, pngs, args, [1, 2, 4, 8],
            client_cpus=set(range(1, os.cpu_count())))

    if not args.skip_baseline:
        results["baseline"]["cold_start_s"] = cold_starts({"baseline": (baseline_cmd, {})}, pngs[0],
                                                          max(1, min(3, args.cold_runs)))["baseline"]
        s, b = results["service"], results["baseline"]
        results["ratios"] = {
            "requests_per_s_c1": round(s["c1"]["requests_per_s"] / b["c1"]["requests_per_s"], 2),
            "requests_per_s_c8": round(s["c8"]["requests_per_s"] / b["c8"]["requests_per_s"], 2),
            "cold_start": round(b["cold_start_s"]["median"] / s["cold_start_s"]["median"], 1),
            "cpu_per_request_c8": round(b["c8"]["server_cpu_ms_per_request"] / s["c8"]["server_cpu_ms_per_request"], 2),
            "peak_rss": round(b["peak_rss_mib"] / s["peak_rss_mib"], 2),
        }
        results["baseline_dependencies"] = deps.installed_size(["torch", "flask", "pillow", "numpy"])

    if not args.skip_deps:
        print("installing service/requirements.txt into a fresh venv ...", flush=True)
        results["service_dependencies"] = deps.venv_size(os.path.join(ROOT, "service", "requirements.txt"))

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
            if "cold_start_s" in o:
                text += f"; cold start {o['cold_start_s']['median']} s"
    if "ratios" in r:
        text += "\n\nratios (service / baseline): " + json.dumps(r["ratios"])
    text += "\ntargets: " + json.dumps(r["targets"])
    return text


if __name__ == "__main__":
    main()
