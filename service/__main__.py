"""``python -m service``: serve the app with gunicorn (the container's command).

Configuration is environment variables only; ``python -m service --help`` lists them.
The app is imported once in the gunicorn master (preload) and the workers are forked
from it, so the imports that dominate a cold start are paid once. Each worker then
takes its metrics slot and loads the model in a background thread. On SIGTERM gunicorn
stops accepting and lets in-flight requests finish (up to GRACEFUL_TIMEOUT).
"""
import os
import sys

# One thread per process for the numeric libraries: workers and threads are the
# parallelism, and idle BLAS/OpenMP pools only cost start-up time and memory.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from gunicorn.app.base import BaseApplication  # noqa: E402
from gunicorn.glogging import Logger  # noqa: E402

from . import config as config_module  # noqa: E402
from .log import JsonFormatter  # noqa: E402


class JsonLogger(Logger):
    """gunicorn's own messages as JSON lines, and no access log: the app writes one line
    per request itself (gunicorn would otherwise build its access-log fields on every
    request, even with the access log off, whenever a logging config is given)."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())

    def access(self, resp, req, environ, request_time):
        pass


class Server(BaseApplication):
    def __init__(self, cfg):
        self.cfg_values = cfg
        super().__init__()

    def load_config(self):
        c = self.cfg_values
        host = f"[{c['HOST']}]" if ":" in c["HOST"] else c["HOST"]

        def pre_fork(server, worker):
            # In the master: give the new worker a metrics slot that no live worker holds.
            held = {getattr(w, "metrics_slot", None) for w in server.WORKERS.values()}
            worker.metrics_slot = min(set(range(2 * c["WEB_CONCURRENCY"] + 2)) - held)

        def post_fork(server, worker):
            # In the new worker.
            from .app import start_worker

            start_worker(self.application, worker.metrics_slot)

        def worker_exit(server, worker):
            # In the worker, on its way out (gunicorn calls this while its SystemExit
            # propagates). A process forked after onnxruntime was imported hangs or aborts
            # (SIGABRT, "std::system_error") in onnxruntime's C++ teardown at interpreter
            # exit, so leave with the same status without running it. Every log line is
            # already written: the handlers flush per record and request lines are os.write.
            code = getattr(sys.exc_info()[1], "code", 1)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)

        settings = {
            "bind": [f"{host}:{c['PORT']}"],
            "workers": c["WEB_CONCURRENCY"],
            "threads": c["THREADS"],
            # gthread keeps connections alive (Knative's queue-proxy reuses them); with
            # one thread the plain sync worker is cheaper.
            "worker_class": "gthread" if c["THREADS"] > 1 else "sync",
            "preload_app": True,
            "graceful_timeout": c["GRACEFUL_TIMEOUT"],
            "timeout": 60,
            "keepalive": 75,  # longer than any sensible proxy idle timeout
            "accesslog": None,  # the app logs one JSON line per request itself
            "loglevel": c["LOG_LEVEL"].lower(),
            "logger_class": JsonLogger,
            "pre_fork": pre_fork,
            "post_fork": post_fork,
            "worker_exit": worker_exit,
            "proc_name": "digitdraw",
            "control_socket_disable": True,  # no runtime control socket in $HOME, nothing to manage
        }
        if os.path.isdir("/dev/shm"):
            settings["worker_tmp_dir"] = "/dev/shm"  # heartbeat file off the (possibly slow) disk
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        self.application = create_app({**self.cfg_values, "START_LOADER": False})
        import onnxruntime  # noqa: F401  imported once here rather than in every worker
        return self.application


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
    Server(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
