"""Publish an exported ONNX model to one or more model stores (layout in service/contract.py).

For each store, in order:

1. if the store already holds a version with this model's sha256, say so and stop: a rerun
   of a finished run publishes nothing new and moves nothing;
2. upload ``models/<version>/model.onnx`` and the training checkpoint if given, ask the
   promotion gate (training/champion.py) about the version LATEST names, and upload
   ``model.json`` with its verdict as ``evaluation`` (objects are never overwritten);
3. read them back with ``load_verified``, exactly as the service will, and check the sha256;
4. only then move ``LATEST`` with compare-and-swap (training/registry.py records the move
   in the store's history), if the gate allows it (``force`` moves it whatever the gate says).

The gate is the only judge, and publish() the only caller. If another publisher moves
LATEST between our read and our swap, we re-read it, ask the gate about the new LATEST and
try again, a bounded number of times; model.json then keeps the first verdict, and the log
and the history entry's reason give the one that moved (or kept) LATEST. No publisher ever
overwrites LATEST blindly.

A crash at any point before the swap leaves LATEST on the previous good version; the
orphaned version directory is harmless (the service only follows LATEST).

This module needs onnx but not torch.
"""
import datetime
import json

import onnx

from service import contract
from service.contract import INPUT_NAME, INPUT_SHAPE, OUTPUT_NAME, OUTPUT_SHAPE
from service.store import (PointerConflict, StoreError, StoreNotFound, StoreUnreachable, load_verified, open_store,
                           sha256_hex)
from training import registry
from training.cli import actor

ATTEMPTS = 5  # LATEST swaps tried per store before giving up (each failure means another publisher won)

# Keys publish() writes into model.json itself; meta may not set them.
RESERVED = ("version", "created_at", "sha256", "size_bytes", "input", "output", "evaluation")


def model_signature(onnx_bytes):
    """Check that ``onnx_bytes`` meets the store contract and return its input/output description.

    Returns ``{"input": {"name", "shape", "dtype"}, "output": {...}}`` with the batch
    dimension written as "N". Raises ValueError naming what is wrong: not ONNX, external
    data, or a name, shape, type or static batch size the service cannot use.
    """
    try:
        model = onnx.load_from_string(onnx_bytes)
    except Exception as e:  # protobuf raises its own DecodeError, onnx others
        raise ValueError(f"not a valid ONNX model ({type(e).__name__}: {e})") from e
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ValueError(f"ONNX model keeps {len(external)} tensors in external data files (e.g. {external[0]!r}); "
                         "export it as one file (external_data=False)")

    def describe(values, kind, name, shape):
        if [v.name for v in values] != [name]:
            raise ValueError(f"ONNX model {kind}s are {[v.name for v in values]}; the store contract needs one "
                             f"{kind} named {name!r}")
        tensor = values[0].type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT:
            raise ValueError(f"ONNX {kind} {name!r} has type {onnx.TensorProto.DataType.Name(tensor.elem_type)}; "
                             "the store contract needs FLOAT (float32)")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if len(dims) != len(shape) or dims[1:] != shape[1:] or dims[0] is not None:
            got = ["N" if d is None else d for d in dims]
            raise ValueError(f"ONNX {kind} {name!r} has shape {got}; the store contract needs {shape} "
                             "with a dynamic batch dimension N")
        return {"name": name, "shape": list(shape), "dtype": "float32"}

    return {"input": describe(model.graph.input, "input", INPUT_NAME, INPUT_SHAPE),
            "output": describe(model.graph.output, "output", OUTPUT_NAME, OUTPUT_SHAPE)}


def val_accuracy(meta, where):
    """meta["metrics"]["val_accuracy"] as a float in [0, 1], or ValueError naming ``where``."""
    try:
        acc = float(meta["metrics"]["val_accuracy"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where} has no numeric metrics.val_accuracy ({type(e).__name__}: {e})") from e
    if not 0.0 <= acc <= 1.0:
        raise ValueError(f"{where}: metrics.val_accuracy={acc} is not a fraction in [0, 1]")
    return acc


def publish(onnx_bytes, meta, store_uris, gate, force=False, log=print, attempts=ATTEMPTS, checkpoint=None, by=None):
    """Publish ``onnx_bytes`` as a new version to every store in ``store_uris``.

    ``meta`` goes into model.json as is (it must be JSON-serialisable and hold
    ``metrics.val_accuracy`` as a fraction; add data source, training config, code
    revision); publish adds version, created_at, sha256, size_bytes, input, output and
    ``evaluation``, the gate's record of its verdict. The version is
    ``<UTC %Y%m%dT%H%M%SZ>-<first 8 hex of sha256>``, so names sort by time.

    ``gate(store, current LATEST version or None, onnx_bytes)`` returns a verdict with
    ``promote``, ``reason`` and ``record`` (training/champion.py: ``Gate``); ``force``
    promotes whatever it says. ``checkpoint`` (bytes) is stored beside the model for warm
    starts. ``by`` names who publishes, for the store's history.

    Returns ``{"version", "sha256", "stores": {uri: {"promoted", "reason", "previous", "conflicts"}}}``
    where ``previous`` is the LATEST version we replaced (promoted) or kept (not promoted)
    and ``conflicts`` counts swaps lost to other publishers. ``log`` gets one line per step
    ("uploaded .../model.onnx", "uploaded .../model.json", "verified", "moving LATEST",
    "LATEST is now", or "NOT promoting" with the reason).

    Every store is tried. If any failed, the first failure is re-raised afterwards with its
    class (StoreUnreachable, StoreError, PointerConflict) and a message naming the store and
    saying which stores did succeed. ValueError means the model or meta is unusable; then
    nothing is written anywhere.
    """
    if not store_uris:
        raise ValueError("no model store given; pass at least one directory or gs://bucket/prefix")
    signature = model_signature(onnx_bytes)
    acc = val_accuracy(meta, "meta")
    clash = sorted(set(meta) & set(RESERVED))
    if clash:
        raise ValueError(f"meta sets {clash}, which publish writes itself; remove them from meta")

    now = datetime.datetime.now(datetime.timezone.utc)
    sha = sha256_hex(onnx_bytes)
    version = f"{now:%Y%m%dT%H%M%SZ}-{sha[:8]}"
    record = {**meta, "version": version, "created_at": f"{now:%Y-%m-%dT%H:%M:%SZ}", "sha256": sha,
              "size_bytes": len(onnx_bytes), **signature}
    try:
        json.dumps(record)
    except TypeError as e:
        raise ValueError(f"meta is not JSON-serialisable ({e}); convert numpy/torch values to plain Python") from e

    log(f"publish: version {version} (val_accuracy {acc:.4f}, {len(onnx_bytes):,} bytes) to {len(store_uris)} store(s)")
    results, failures = {}, []
    for uri in store_uris:
        try:
            store = open_store(uri)
            existing = published_as(store, sha)
            if existing:
                pointer, _ = store.read_latest()
                current = pointer["version"] if pointer else None
                reason = (f"{store.uri} already holds this model (sha256 {sha[:12]}) as {existing}; "
                          f"not publishing or promoting it again")
                log(f"publish: {reason}")
                results[uri] = _result(current == existing, reason, current, 0)
                continue
            results[uri] = _publish_one(store, version, onnx_bytes, record, checkpoint, sha, gate, force,
                                        by or actor(), log, attempts)
        except StoreError as e:
            log(f"publish: {uri}: FAILED: {e}")
            failures.append((uri, e))
    if failures:
        uri, e = failures[0]
        done = ", ".join(results) or "none"
        raise type(e)(f"publishing {version} to {uri} failed: {e} (stores that succeeded: {done})") from e
    return {"version": version, "sha256": sha, "stores": results}


def _read_latest(store, attempts):
    """(pointer, token) of LATEST; on GCS a read can race a move, so try again."""
    for _ in range(attempts - 1):
        try:
            return store.read_latest()
        except PointerConflict:
            continue
    return store.read_latest()


def published_as(store, sha):
    """The version in ``store`` whose model has this sha256, or None."""
    for version in store.list_versions():
        if not version.endswith(f"-{sha[:8]}"):
            continue
        try:
            if json.loads(store.read(contract.model_key(version, contract.META_FILE))).get("sha256") == sha:
                return version
        except (StoreNotFound, ValueError):
            continue
    return None


def _publish_one(store, version, onnx_bytes, record, checkpoint, sha, gate, force, by, log, attempts):
    # model.onnx (and the checkpoint) first: a model.json always describes a model that is already there.
    files = [(contract.MODEL_FILE, onnx_bytes)] + ([(contract.CHECKPOINT_FILE, checkpoint)] if checkpoint else [])
    for name, data in files:
        _put(store, contract.model_key(version, name), data)
        log(f"publish: {store.uri}: uploaded {contract.model_key(version, name)}")

    # The gate's verdict on the LATEST of now goes into model.json.
    pointer, _ = _read_latest(store, attempts)
    judged = pointer["version"] if pointer else None
    verdict = gate(store, judged, onnx_bytes)
    meta_bytes = (json.dumps({**record, "evaluation": verdict.record}, indent=2, sort_keys=True) + "\n").encode()
    _put(store, contract.model_key(version, contract.META_FILE), meta_bytes)
    log(f"publish: {store.uri}: uploaded {contract.model_key(version, contract.META_FILE)}")

    # Read back through the service's own check, so LATEST never names a version it would refuse.
    _, stored = load_verified(store, version)
    if stored.get("sha256") != sha:
        raise StoreError(f"{store.uri}/{contract.model_key(version, contract.META_FILE)} read back describes sha256 "
                         f"{stored.get('sha256')}, not this model's {sha}")
    log(f"publish: {store.uri}: verified {version} (sha256 {sha[:12]})")

    conflicts = 0
    for attempt in range(1, attempts + 1):
        try:
            pointer, token = store.read_latest()
        except PointerConflict:  # GCS: LATEST moved while we were reading it
            conflicts += 1
            continue
        current = pointer["version"] if pointer else None
        if current == version:
            return _result(True, f"{version} is already LATEST", current, conflicts)
        if current != judged:
            log(f"publish: {store.uri}: LATEST moved from {judged} to {current} since model.json's evaluation; "
                "asking the gate about it")
            judged, verdict = current, gate(store, current, onnx_bytes)
        promote, reason = verdict.promote, verdict.reason
        if not promote and force:
            promote, reason = True, f"forced, although {reason}"
        if not promote:
            reason += "; published but not promoted (force to promote it anyway)"
            log(f"publish: {store.uri}: NOT promoting {version}: {reason}")
            return _result(False, reason, current, conflicts)
        log(f"publish: {store.uri}: moving LATEST {current} -> {version} ({reason})")
        try:
            registry.move_latest(store, version, pointer, token, "publish", by, reason)
        except PointerConflict:
            conflicts += 1
            log(f"publish: {store.uri}: another publisher moved LATEST first; re-reading it and re-applying "
                f"the gate (attempt {attempt}/{attempts})")
            continue
        log(f"publish: {store.uri}: LATEST is now {version}")
        return _result(True, reason, current, conflicts)
    raise PointerConflict(f"{store.uri}: LATEST kept moving under other publishers; gave up after {attempts} "
                          f"attempts. {version} is uploaded and verified but not promoted; publish again to retry")


def _result(promoted, reason, previous, conflicts):
    return {"promoted": promoted, "reason": reason, "previous": previous, "conflicts": conflicts}


def _put(store, key, data):
    """Write ``key`` once; an existing identical object (a retried publish) is fine, a different one is not."""
    try:
        store.create(key, data)
    except StoreUnreachable:
        raise
    except StoreError as e:
        try:
            existing = store.read(key)
        except StoreNotFound:
            raise e from None
        if existing != data:
            raise StoreError(f"{store.uri}/{key} already exists with different content; versions are immutable, "
                             "publish again for a new version name") from e
