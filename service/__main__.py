"""``python -m service``: serve the app with Granian (the container's command).

Configuration is environment variables only; ``python -m service --help`` lists them.

Granian parses HTTP and keeps connections in Rust, and hands each request to the WSGI
app on a Python thread. Measured against gunicorn's gthread worker on the same app,
it used about two thirds of the CPU per request (bench/serve_bench.py; gunicorn's
HTTP parsing is Python, and its poller thread hands every request to a worker thread
through the GIL).

The app is imported once in the main process and the workers are forked from it, so
the imports that dominate a cold start are paid once. Each worker then takes its
metrics slot and loads the model. On SIGTERM the workers stop accepting and let
in-flight requests finish (up to GRACEFUL_TIMEOUT).
"""
import gc
import os
import sys

# No garbage collection while the imports build their ~80,000 long-lived objects: the
# collector ran over 100 times among them, ~25 ms of every cold start. They are frozen
# before the workers fork (see serve), as the gc module's docs advise for pre-forking
# servers, so no worker's collection writes to their pages either.
gc.disable()

# One thread per process for the numeric libraries: workers and threads are the
# parallelism, and idle BLAS/OpenMP pools only cost start-up time and memory.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from . import config as config_module  # noqa: E402
from . import log as log_module  # noqa: E402


def serve(cfg):
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, RuntimeModes
    from granian.log import LogLevels

    from .app import create_app, start_worker

    app = create_app({**cfg, "START_LOADER": False})
    import onnxruntime  # noqa: F401  imported once here rather than in every worker

    def worker_app():  # called in each worker, after fork
        start_worker(app)
        return app

    server = Granian(
        "service.app:create_app",  # only a label here: worker_app is the loader
        address=cfg["HOST"],
        port=cfg["PORT"],
        interface=Interfaces.WSGI,
        workers=cfg["WEB_CONCURRENCY"],
        blocking_threads=cfg["THREADS"],
        # One Rust thread per worker is plenty for the I/O, and the single-threaded
        # runtime hands requests to Python without crossing threads.
        runtime_threads=1,
        runtime_mode=RuntimeModes.st,
        websockets=False,
        http=HTTPModes.http1,  # Knative's queue-proxy speaks HTTP/1.1 to the container
        log_level=LogLevels(cfg["LOG_LEVEL"].lower()),
        log_dictconfig=log_module.dict_config(cfg["LOG_LEVEL"]),
        log_access=False,  # the app writes one JSON line per request itself
        workers_kill_timeout=cfg["GRACEFUL_TIMEOUT"],
        respawn_failed_workers=True,
    )
    gc.freeze()
    gc.enable()
    server.serve(target_loader=worker_app, wrap_loader=False)


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip() + "\n\nEnvironment variables:\n" + config_module.__doc__.split("\n", 2)[2])
        return 0
    if len(sys.argv) > 1:
        print(f"python -m service takes no arguments (got {sys.argv[1:]}); configure it with environment "
              f"variables, see --help", file=sys.stderr)
        return 2
    try:
        cfg = config_module.load()
    except ValueError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
