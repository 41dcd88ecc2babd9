"""Serving the review page: the store, the queue, the sign-in scheme and the app, under Granian.

One worker process holds the queue and the sessions in memory (both are the worker's own:
a second worker would have sessions of its own). Granian parses HTTP in Rust; the app is
WSGI and runs on a few threads, as deciding a page waits on the store.
"""
import logging
import logging.config
import os
import socket
import sys

from service.store import LocalStore, StoreError, StoreUnreachable, open_store
from training.cli import actor

from .app import create_app, link_for
from .auth import IapAuth, LinkAuth
from .queue import Queue

THREADS = 4  # requests at once: a page of decisions waits on the store


def _log_config(level):
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                    "formatter": "plain"}},
            "root": {"handlers": ["stderr"], "level": level.upper()},
            # Granian's own loggers: through the root handler like the rest.
            "loggers": {"_granian": {"handlers": [], "propagate": True},
                        "granian.access": {"handlers": [], "propagate": True}}}


def _port_is_free(host, port):
    """Whether ``host:port`` can be bound: Granian binds with SO_REUSEPORT, so a second
    server on a taken port would share it silently (service/__main__.py does the same)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def build(args):
    """(the app, the sign-in scheme, the queue) for parsed arguments. The queue reads every
    record here, once, so a store that cannot be reached stops the start."""
    store = open_store(args.store)
    if isinstance(store, LocalStore) and not os.path.isdir(store.root):
        raise StoreUnreachable(f"store directory {store.root} does not exist (is the volume mounted? the service "
                               "creates it with the first correction)")
    queue = Queue(store, args.refresh_seconds)
    queue.refresh(force=True)
    if args.auth == "iap":
        auth = IapAuth(args.iap_audience, args.reviewers.split(","), args.iap_keys_url)
    else:
        auth = LinkAuth(actor(), args.session_seconds, args.link_seconds)
    return create_app(queue, auth), auth, queue


def serve(args):
    """Serve the review page for parsed arguments until stopped; the exit code."""
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    logging.config.dictConfig(_log_config(args.log_level))
    if args.port and not _port_is_free(args.host, args.port):
        print(f"error: port {args.port} on {args.host} is already in use (another review server?); stop it or pass "
              "--port (env REVIEW_PORT)", file=sys.stderr)
        return 2
    try:
        app, auth, queue = build(args)
    except (StoreError, ValueError) as e:
        print(f"error: {e}; check --store (env FEEDBACK_URI), the network and the credentials", file=sys.stderr)
        return 4 if isinstance(e, StoreUnreachable) else 2
    pending = sum(queue.state(i) == "pending" for i in queue.items)
    print(f"review: {len(queue.items):,} records in {queue.store.uri}, {pending:,} pending", flush=True)
    if args.auth == "link":
        host = f"[{args.host}]" if ":" in args.host else args.host
        valid = f"{args.link_seconds // 60} min" if args.link_seconds >= 60 else f"{args.link_seconds} s"
        print(f"review: open this link to sign in (it works once, for {valid}):\n"
              f"  {link_for(f'http://{host}:{args.port}/', auth)}", flush=True)
    elif not args.iap_audience:
        logging.getLogger("training.review").warning(
            "no IAP audience (REVIEW_IAP_AUDIENCE): every request is refused until infra/deploy-review.sh --expose "
            "sets it")
    else:
        print(f"review: Identity-Aware Proxy for {args.iap_audience}; reviewers: {args.reviewers}", flush=True)
    server = Granian("training.review.app:app", address=args.host, port=args.port, interface=Interfaces.WSGI,
                     workers=1, blocking_threads=THREADS, log_level=LogLevels(args.log_level.lower()),
                     log_dictconfig=_log_config(args.log_level), log_access=False, respawn_failed_workers=False)
    server.serve(target_loader=lambda: app, wrap_loader=False)
    return 0
