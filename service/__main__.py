"""``python -m service``: serve the app with Granian (the container's command).

Configuration is environment variables only; ``python -m service --help`` lists them.

Granian parses HTTP and keeps connections in Rust; the front (service/front.py) reads
each request's body on the event loop before the WSGI app sees the request. Measured
against gunicorn's gthread worker on the same app, Granian used about two thirds of the
CPU per request (gunicorn's HTTP parsing is Python).

The app is imported once in the main process and the workers are forked from it, so
the imports that dominate a cold start are paid once. Each worker then takes its
metrics slot and loads the model. On SIGTERM the workers stop accepting and let
in-flight requests finish (up to GRACEFUL_TIMEOUT).
"""
import gc
import os
import signal
import socket
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
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from .app import create_app, start_worker
    from .front import Front

    app = create_app({**cfg, "START_LOADER": False})
    import onnxruntime  # noqa: F401  imported once here rather than in every worker
    master = os.getpid()

    def worker_app():  # called in each worker, after fork
        _exit_with(master)
        start_worker(app)
        return Front(app, cfg["MAX_BODY_BYTES"], cfg["READ_TIMEOUT_SECONDS"], cfg["THREADS"])

    server = Granian(
        "service.front:Front",  # only a label here: worker_app is the loader
        address=cfg["HOST"],
        port=cfg["PORT"],
        # RSGI: the front reads each body on the event loop before a request thread gets it
        # (service/front.py), so a slow upload holds no thread.
        interface=Interfaces.RSGI,
        workers=cfg["WEB_CONCURRENCY"],
        # One Rust thread per worker is plenty for the I/O, and the single-threaded
        # runtime hands requests to Python without crossing threads.
        runtime_threads=1,
        runtime_mode=RuntimeModes.st,
        websockets=False,
        http=HTTPModes.http1,  # Knative's queue-proxy speaks HTTP/1.1 to the container
        # Granian holds one permit per open connection, idle ones included, and accepts no more
        # while they are taken: its default (1,024) let 1,030 silent connections keep /healthz
        # waiting until the header timeout closed them. An idle connection costs about 3 KB.
        backpressure=cfg["MAX_CONNECTIONS"],
        # Closes connections whose headers have not arrived, and idle keep-alive ones, alike.
        http1_settings=HTTP1Settings(header_read_timeout=cfg["READ_TIMEOUT_SECONDS"] * 1000),
        log_level=LogLevels(cfg["LOG_LEVEL"].lower()),
        log_dictconfig=log_module.dict_config(cfg["LOG_LEVEL"]),
        log_access=False,  # the app writes one JSON line per request itself
        workers_kill_timeout=cfg["GRACEFUL_TIMEOUT"],
        respawn_failed_workers=True,
    )
    gc.freeze()
    gc.enable()
    server.serve(target_loader=worker_app, wrap_loader=False)


def _exit_with(master):
    """Have the kernel stop this worker when the master dies (PR_SET_PDEATHSIG): a master
    killed with SIGKILL would otherwise leave it serving as an orphan on the port."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != master:  # it died before the call: nobody will signal us
        os.kill(os.getpid(), signal.SIGTERM)


def _port_is_free(host, port):
    """Whether ``host:port`` can be bound. Granian binds with SO_REUSEPORT, so a second
    server on a taken port would share it silently; a plain bind finds it taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT socket is no server
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip() + "\n\nEnvironment variables (name, default, meaning):\n" + config_module.table())
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
    if cfg["PORT"] and not _port_is_free(cfg["HOST"], cfg["PORT"]):
        print(f"port {cfg['PORT']} on {cfg['HOST']} is already in use (another DigitDraw server, or an "
              f"orphan of one?); stop it or set PORT to a free port", file=sys.stderr)
        return 2
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
