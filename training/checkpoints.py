"""Training checkpoints: what one holds, where copies go, and which one a run resumes from.

Every epoch rank 0 writes one checkpoint directory, ``checkpoint_epoch_NNN/``, holding
CHECKPOINT_FILE (model, optimizer, scheduler, epoch, metrics, history, model config) and
METRICS_FILE, and it lands in two places:

1. ``--storage-path``: Ray Train's own run directory, ``<storage>/<run-name>/``. Ray Train
   needs storage that every node of the cluster sees, because workers on any node upload
   checkpoints there and restarted workers read them back. Locally that is a directory; on
   Kubernetes it is a PVC mounted at the same path in the head and every worker pod, so it
   must be ReadWriteMany (Filestore/NFS), not ReadWriteOnce. A ``gs://`` URI works too.
2. ``--checkpoint-mirror`` (optional, usually ``gs://bucket/prefix``): after Ray has the
   epoch, rank 0 copies the same directory to ``<mirror>/<run-name>/checkpoint_epoch_NNN/``
   (METRICS_FILE last, so a directory holding it is complete) and prunes the mirror to the
   best N and the latest. The mirror outlives the cluster and its PVC.

A resuming worker takes the newest complete checkpoint it can find (``newest``): the one
Ray hands it, the run directory's, or the mirror's. Ray's controller registers a checkpoint
only when it collects the epoch's report, so a worker that dies just after writing one gets
an older checkpoint (or none) from Ray, while the run directory already holds the newer one.

Storage is read and written through the store client (service/store.py); only Ray Train
itself needs a pyarrow filesystem (``ray_storage``).
"""
import io
import json
import os
from urllib.parse import urlparse

import torch

from service import contract
from service.store import StoreError, StoreNotFound, open_store

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"
PREFIX = "checkpoint_epoch_"


def dir_name(epoch):
    return f"{PREFIX}{epoch:03d}"


def ray_storage(uri):
    """(pyarrow filesystem or None, path) for RunConfig: Ray Train takes ``gs://`` storage
    only as a pyarrow filesystem. With STORAGE_EMULATOR_HOST set (fake-gcs-server), gs://
    goes to the emulator anonymously over its scheme."""
    if not uri.startswith("gs://"):
        path = os.path.abspath(uri)
        os.makedirs(path, exist_ok=True)
        return None, path
    import pyarrow.fs as pafs

    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        parsed = urlparse(host if "://" in host else f"http://{host}")
        fs = pafs.GcsFileSystem(anonymous=True, scheme=parsed.scheme, endpoint_override=parsed.netloc)
    else:
        fs = pafs.GcsFileSystem()
    return fs, uri[len("gs://"):].rstrip("/")


def save(state, directory):
    """Write ``state`` as a checkpoint directory (CHECKPOINT_FILE, then METRICS_FILE)."""
    torch.save(state, os.path.join(directory, CHECKPOINT_FILE))
    with open(os.path.join(directory, METRICS_FILE), "w") as f:
        json.dump(state["metrics"], f)


def load(checkpoint):
    """The state saved in a ray.train.Checkpoint (local or remote storage)."""
    with checkpoint.as_directory() as d:
        return torch.load(os.path.join(d, CHECKPOINT_FILE), map_location="cpu", weights_only=False)


def load_bytes(data):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def keep_names(history, keep):
    """Checkpoint directory names to keep: the best ``keep`` by val_acc, plus the latest."""
    best = sorted(history, key=lambda m: (m["val_acc"], m["epoch"]), reverse=True)[:keep]
    return {dir_name(m["epoch"]) for m in best + history[-1:]}


def mirror(local_dir, mirror_uri, run_name, name, keep):
    """Copy one checkpoint directory to ``<mirror>/<run_name>/<name>`` and drop the mirror's
    checkpoints not in ``keep``."""
    store = open_store(mirror_uri)
    for file in (CHECKPOINT_FILE, METRICS_FILE):  # METRICS_FILE last: it marks a complete copy
        with open(os.path.join(local_dir, file), "rb") as f:
            store.put(f"{run_name}/{name}/{file}", f.read())
    for other in store.children(run_name):
        if other.startswith(PREFIX) and other not in keep:
            store.delete(f"{run_name}/{other}")


def newest_complete(uri, run_name, log=print):
    """The newest checkpoint of ``run_name`` under ``uri`` that is complete and loads, as a
    state dict with ``source`` set, or None. A directory without METRICS_FILE, or whose
    CHECKPOINT_FILE does not load, is skipped and logged."""
    store = open_store(uri)
    try:
        names = [n for n in store.children(run_name) if n.startswith(PREFIX)]
    except StoreError as e:
        log(f"resume: cannot list {uri}/{run_name} ({e}); not resuming from it")
        return None
    for name in sorted(names, reverse=True):
        where = f"{store.uri}/{run_name}/{name}"
        try:
            if not store.exists(f"{run_name}/{name}/{METRICS_FILE}"):
                continue
            state = load_bytes(store.read(f"{run_name}/{name}/{CHECKPOINT_FILE}"))
        except Exception as e:  # a half-copied or corrupt file: the one before it will do
            log(f"resume: skipping {where}: it does not load ({type(e).__name__}: {e})")
            continue
        state["source"] = where
        return state
    return None


def newest(candidates):
    """Of several resume candidates (states or None), the one with the highest epoch."""
    states = [s for s in candidates if s is not None]
    return max(states, key=lambda s: s["epoch"]) if states else None



def warm_start(init_from, stores):
    """(model state, model config, where) to start a run from, or None for ``none``.

    ``latest`` is the checkpoint published beside the model LATEST names in the first of
    ``stores``; anything else is the URI of a checkpoint file or directory (a directory,
    PVC path or gs://). ValueError says what is missing and which flag to use instead.
    """
    if init_from in ("", "none"):
        return None
    if init_from == "latest":
        if not stores:
            raise ValueError("--init-from latest starts from the model LATEST names in the first --publish store, "
                             "and there is none; pass --publish, or --init-from none")
        store = open_store(stores[0])
        pointer, _ = store.read_latest()
        if pointer is None:
            raise ValueError(f"--init-from latest: {store.uri} has no LATEST model yet; train the first one with "
                             "--init-from none")
        version = pointer["version"]
        key = contract.model_key(version, CHECKPOINT_FILE)
        try:
            data = store.read(key)
        except StoreNotFound:
            raise ValueError(f"--init-from latest: {version} in {store.uri} was published without its training "
                             f"checkpoint ({key}); use --init-from none, or --init-from <URI of a run's "
                             f"{PREFIX}NNN/{CHECKPOINT_FILE}>") from None
        where = f"{store.uri}/{key}"
    else:
        path = init_from.rstrip("/")
        if not path.endswith(CHECKPOINT_FILE):
            path = f"{path}/{CHECKPOINT_FILE}"
        parent, name = path.rsplit("/", 1)
        try:
            data = open_store(parent).read(name)
        except StoreError as e:  # missing, or its directory or bucket is
            raise ValueError(f"--init-from {init_from}: no checkpoint at {path} ({e}); pass a checkpoint file "
                             f"or directory, latest, or none") from None
        where = path
    try:
        state = load_bytes(data)
        return state["model"], state["model_config"], where
    except Exception as e:
        raise ValueError(f"--init-from {init_from}: {where} is not a training checkpoint "
                         f"({type(e).__name__}: {e})") from None
