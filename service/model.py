"""The loaded model, and the background loader that fetches, verifies and hot-swaps it.

A request reads ``holder.current`` once and uses that Model to the end, so a swap
(one reference assignment) happens between requests, never inside one. A new model is
only swapped in after its sha256 matches model.json, ONNX Runtime accepts it, its input
and output have the contract's shapes, and a test inference gives finite logits. Anything
less is refused and logged, and the old model keeps serving.
"""
import logging
import threading
import time
from collections import OrderedDict

import numpy as np

from . import contract
from . import store as model_store

log = logging.getLogger("service.model")

# How long a version the store did not hold is taken as absent before it is asked again,
# and how many such names are remembered.
ABSENT_SECONDS, ABSENT_KEPT = 300, 1024


class ModelInvalid(Exception):
    """The model file does not satisfy the model contract."""


class Model:
    """A verified ONNX model: the store contract's input in, logits out."""

    def __init__(self, onnx_bytes, meta):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # One thread per inference: requests already run in parallel across workers and
        # threads, and extra intra-op threads spin and burn CPU for a model this small.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelInvalid(f"ONNX Runtime cannot load the model: {e}") from e
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (len(inputs) != 1 or list(inputs[0].shape[1:]) != contract.INPUT_SHAPE[1:]
                or inputs[0].type != "tensor(float)"):
            raise ModelInvalid(f"expected one float input {contract.INPUT_SHAPE}, got "
                               f"{[(i.name, i.type, i.shape) for i in inputs]}")
        if list(outputs[0].shape[1:]) != contract.OUTPUT_SHAPE[1:]:
            raise ModelInvalid(f"expected output {contract.OUTPUT_SHAPE}, got {[(o.name, o.shape) for o in outputs]}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.meta = meta
        self.version = str(meta.get("version", "unknown"))
        logits = self.logits(np.zeros((2, *contract.INPUT_SHAPE[1:]), np.float32))  # also warms up the session
        if logits.shape != (2, contract.CLASSES) or not np.isfinite(logits).all():
            raise ModelInvalid(f"a test inference gave logits of shape {logits.shape} "
                               f"(finite: {bool(np.isfinite(logits).all())}); expected finite [2,10]")

    def logits(self, x):
        """The contract's input, float32 [N, 1, 28, 28] -> logits, float32 [N, 10]."""
        return self.session.run([self.output_name], {self.input_name: x})[0]


def softmax(logits):
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class ModelHolder:
    """Keeps a verified model from a store; ``current`` is None until one loads.

    Following (``pinned`` unset), it serves the version LATEST names and swaps in the next
    one LATEST moves to. Pinned, it serves exactly ``pinned`` and never reads LATEST: a
    canary revision, or a service held on a version while LATEST moves on.
    """

    def __init__(self, uri, poll_seconds=0, pinned=None):
        self.uri = uri
        self.store = model_store.open_store(uri)  # a bad URI fails here, at start-up
        self.poll_seconds = poll_seconds
        self.pinned = pinned or None
        self.current = None
        self.on_event = None  # called with ("ok" | "refused", version), e.g. to count for /metrics
        self._thread = None
        self._refused = None  # (version, LATEST token) of a version we refused, so we log it once
        self._held, self._absent, self._held_lock = set(), OrderedDict(), threading.Lock()

    @property
    def mode(self):
        return "pinned" if self.pinned else "following"

    @property
    def is_local(self):
        return isinstance(self.store, model_store.LocalStore)

    def start(self, first_attempt_inline=False):
        """Start the background loader (once per process: threads do not survive fork).

        With ``first_attempt_inline`` the first load is tried in the caller's thread;
        a failure is left to the background loader's retries.
        """
        if first_attempt_inline and self.current is None:
            try:
                self.check()
            except Exception:
                pass  # the loader thread retries and logs
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
            self._thread.start()
        return self

    def holds(self, version):
        """Whether the store holds ``version`` (its model.json): a name a client sent, checked
        before it may label a metric. A version once found is remembered; a name not found is
        taken as absent for ABSENT_SECONDS, so made-up names cost a store read each at most
        that often. An unreachable store holds nothing for now. Can wait on the store."""
        current = self.current
        if current is not None and version == current.version or version in self._held:
            return True
        now = time.monotonic()
        with self._held_lock:
            seen = self._absent.get(version)
            if seen is not None and now - seen < ABSENT_SECONDS:
                return False
        try:
            found = self.store.exists(contract.model_key(version, contract.META_FILE))
        except model_store.StoreError:
            return False
        with self._held_lock:
            if found:
                self._held.add(version)
                self._absent.pop(version, None)
            else:
                self._absent[version] = now
                self._absent.move_to_end(version)
                while len(self._absent) > ABSENT_KEPT:
                    self._absent.popitem(last=False)
        return found

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while self.current is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.current is not None

    def _run(self):
        delay = 0.5
        while self.current is None:
            try:
                self.check()
            except Exception as e:  # keep retrying whatever went wrong; say what it was
                log.warning(f"model not ready ({self.mode}): {e}; retrying in {delay:.1f}s",
                            extra={"fields": {"model_uri": self.uri, "retry_in_s": delay, "mode": self.mode}})
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        failures = _Failures()
        while self.poll_seconds > 0 and not self.pinned:  # a pinned version never changes
            time.sleep(self.poll_seconds)
            try:
                self.check()
            except Exception as e:
                failures.failed(f"cannot check {self.uri} for a new model: {e}; still serving {self.current.version}",
                                {"model_uri": self.uri})
            else:
                failures.recovered(f"{self.uri} answers again; serving {self.current.version}")

    def _event(self, result, version):
        if self.on_event is not None:
            self.on_event(result, version)

    def check(self):
        """Load the version to serve (the pinned one, or the one LATEST names) if it is not
        the current one.

        Raises StoreError when the store is unreachable or has no model yet, or when the
        first model fails verification. A later model that fails verification is refused
        and logged once, and the current one stays.
        """
        store = self.store
        if self.pinned:
            version, token = self.pinned, None
        else:
            pointer, token = store.read_latest()
            if pointer is None:
                raise model_store.StoreNotFound(
                    f"no model published in {store.uri} yet ({contract.LATEST} is missing); "
                    f"train and publish one with `python -m training --publish {self.uri}`")
            version = pointer["version"]
        if self.current is not None and version == self.current.version:
            return
        if self._refused == (version, token):
            if self.current is None:
                raise model_store.StoreError(f"model {version} failed verification; "
                                             + ("pin a good version" if self.pinned else
                                                "publish a good model and move LATEST to it"))
            return
        started = time.monotonic()
        try:
            onnx_bytes, meta = model_store.load_verified(store, version)
            model = Model(onnx_bytes, meta)
        except (model_store.StoreUnreachable, model_store.StoreNotFound) as e:
            raise model_store.StoreUnreachable(f"cannot fetch model {version}: {e}") from e
        except (model_store.StoreError, ModelInvalid) as e:
            self._refused = (version, token)
            self._event("refused", version)
            serving = self.current.version if self.current else "nothing"
            log.error(f"refused model {version} from {store.uri}: {e}; still serving {serving}",
                      extra={"fields": {"model_version": version, "model_uri": store.uri, "mode": self.mode}})
            if self.current is None:
                raise
            return
        previous = self.current
        self.current = model  # the atomic swap: one reference assignment
        self._event("ok", model.version)
        log.info(f"model {model.version} loaded from {store.uri} ({self.mode})"
                 + (f", replacing {previous.version}" if previous else ""),
                 extra={"fields": {"model_version": model.version, "model_uri": store.uri, "mode": self.mode,
                                   "load_ms": round(1000 * (time.monotonic() - started), 1)}})


class _Failures:
    """Logs a run of repeated failures without flooding: the first one, a changed message,
    and once a minute how many there were; then once when they stop."""

    def __init__(self, every=60.0):
        self.every, self.count, self.message, self.logged_at = every, 0, None, 0.0

    def failed(self, message, fields):
        self.count += 1
        now = time.monotonic()
        if message != self.message or now - self.logged_at >= self.every:
            log.warning(message + (f" ({self.count} failures in a row)" if self.count > 1 else ""),
                        extra={"fields": {**fields, "failures": self.count}})
            self.message, self.logged_at = message, now

    def recovered(self, message):
        if self.count:
            log.info(f"{message} after {self.count} failures")
        self.count, self.message = 0, None
