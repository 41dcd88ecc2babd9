"""The model store: where training publishes models and the service reads them.

A store is a local directory, a PVC mount, or ``gs://bucket/prefix``::

    <store>/models/<version>/model.onnx   the model (one file, no external data)
    <store>/models/<version>/model.json   version, created_at, sha256 of model.onnx, metrics, ...
    <store>/models/LATEST                 {"version": "..."}; written last, moved atomically

``LATEST`` is moved with compare-and-swap: every read returns a token (the GCS object
generation, or the file's content on disk) and ``swap_latest`` only succeeds if the
pointer still has that token, so two publishers cannot both win silently.

This module has no torch dependency: the service imports it, and so does training.
google-cloud-storage is imported only for ``gs://`` stores, to keep the service's
cold start short. With ``STORAGE_EMULATOR_HOST`` set, the GCS client talks to an
emulator (fake-gcs-server) instead of Google.
"""
import fcntl
import functools
import hashlib
import json
import os
import tempfile

MODELS = "models"
LATEST = f"{MODELS}/LATEST"
# How long one GCS call retries transient errors (connection refused, 5xx, timeouts)
# before it reports the store unreachable. The client's own default is 120 s, which kept
# an unreachable bucket silent for two minutes; the service's loader retries with backoff
# on top of this, and a publisher's caller sees the failure while it can still act.
GCS_RETRY_SECONDS = 15


@functools.cache
def _retry():
    """The retry policy of every GCS call: the client's own, cut to GCS_RETRY_SECONDS."""
    from google.cloud.storage.retry import DEFAULT_RETRY  # lazy, like the client

    return DEFAULT_RETRY.with_timeout(GCS_RETRY_SECONDS)


class StoreError(Exception):
    """Base class for store problems."""


class StoreUnreachable(StoreError):
    """The store could not be reached (network, credentials, missing bucket or mount)."""


class StoreNotFound(StoreError):
    """The store is reachable but the object does not exist."""


class PointerConflict(StoreError):
    """LATEST changed between our read and our write: another publisher won."""


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


def open_store(uri):
    """Return a store for ``uri``: ``gs://bucket[/prefix]`` or a local path."""
    if uri.startswith("gs://"):
        bucket, _, prefix = uri[len("gs://"):].partition("/")
        if not bucket:
            raise ValueError(f"store URI {uri!r} has no bucket; use gs://BUCKET[/PREFIX]")
        return GCSStore(bucket, prefix.strip("/"))
    if "://" in uri:
        raise ValueError(f"store URI {uri!r}: only local paths and gs://bucket/prefix are supported")
    return LocalStore(uri)


class LocalStore:
    """A store on a filesystem: a directory in the repo, or a PVC mount."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.uri = self.root

    def _path(self, key):
        return os.path.join(self.root, *key.split("/"))

    def read_bytes(self, key):
        if not os.path.isdir(self.root):
            raise StoreUnreachable(f"store directory {self.root} does not exist (is the volume mounted?)")
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StoreNotFound(f"{self._path(key)} not found") from None
        except OSError as e:
            raise StoreUnreachable(f"cannot read {self._path(key)}: {e}") from e

    def write_bytes(self, key, data):
        """Write a new object; never overwrites (a version is immutable once written)."""
        path = self._path(key)
        if os.path.exists(path):
            raise StoreError(f"{path} already exists; versions are immutable, publish a new version")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _atomic_write(path, data)
        except OSError as e:
            raise StoreUnreachable(f"cannot write {path}: {e}") from e

    def read_latest(self):
        """Return (pointer dict or None, token) for LATEST."""
        try:
            raw = self.read_bytes(LATEST)
        except StoreNotFound:
            return None, None
        return _parse_pointer(raw, self._path(LATEST)), raw

    def swap_latest(self, pointer, expected_token):
        """Point LATEST at ``pointer`` if it still holds ``expected_token`` (None: must not exist)."""
        path = self._path(LATEST)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = open(path + ".lock", "a")
        except OSError as e:
            raise StoreUnreachable(f"cannot write {path}: {e}") from e
        # The lock makes check-then-rename one step between publishers on this filesystem;
        # the rename makes the new pointer appear whole to readers, who take no lock.
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(path, "rb") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != expected_token:
                raise PointerConflict(f"{path} changed since it was read; another publisher moved it")
            _atomic_write(path, _dump_pointer(pointer))

    def list_versions(self):
        try:
            return sorted(n for n in os.listdir(self._path(MODELS)) if os.path.isdir(self._path(f"{MODELS}/{n}")))
        except FileNotFoundError:
            return []


class GCSStore:
    """A store in a Google Cloud Storage bucket, under an optional prefix."""

    def __init__(self, bucket, prefix=""):
        self.bucket_name, self.prefix = bucket, prefix
        self.uri = f"gs://{bucket}/{prefix}".rstrip("/")
        self._bucket = None

    def _blob_name(self, key):
        return f"{self.prefix}/{key}" if self.prefix else key

    def _get_bucket(self):
        if self._bucket is None:
            from google.cloud import storage  # lazy: a 0.3 s import the local store never needs

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project="local", credentials=AnonymousCredentials())
            else:
                client = storage.Client()
            self._bucket = client.bucket(self.bucket_name)
        return self._bucket

    def _call(self, what, fn):
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc
        import requests

        try:
            return fn()
        except gexc.NotFound as e:
            if not self._bucket_exists():
                raise StoreUnreachable(f"{what}: bucket gs://{self.bucket_name} does not exist") from e
            raise StoreNotFound(f"{what}: not found") from e
        except gexc.PreconditionFailed as e:
            raise PointerConflict(f"{what}: generation precondition failed; another writer got there first") from e
        except gexc.Forbidden as e:
            raise StoreUnreachable(f"{what}: permission denied on gs://{self.bucket_name} "
                                   f"(check the service account's IAM role)") from e
        except (requests.exceptions.RequestException, auth_exc.GoogleAuthError,
                gexc.ServiceUnavailable, gexc.InternalServerError, gexc.RetryError, OSError) as e:
            raise StoreUnreachable(f"{what}: cannot reach GCS ({type(e).__name__}: {e})") from e

    def _bucket_exists(self):
        # A 404's text does not say whether the bucket or the object is missing, so ask. Listing
        # needs only object-read permission (bucket metadata needs more) and 404s without a bucket.
        from google.api_core import exceptions as gexc

        try:
            list(self._get_bucket().client.list_blobs(self.bucket_name, max_results=1, timeout=30, retry=_retry()))
        except gexc.NotFound:
            return False
        except Exception:  # can't tell: report the original 404 as a missing object
            return True
        return True

    def read_bytes(self, key):
        name = self._blob_name(key)
        return self._call(f"gs://{self.bucket_name}/{name}",
                          lambda: self._get_bucket().blob(name).download_as_bytes(timeout=30, retry=_retry()))

    def write_bytes(self, key, data):
        """Write a new object; never overwrites (if_generation_match=0)."""
        name = self._blob_name(key)
        self._call(f"upload gs://{self.bucket_name}/{name}",
                   lambda: self._get_bucket().blob(name).upload_from_string(
                       data, if_generation_match=0, timeout=120, retry=_retry()))

    def read_latest(self):
        name = self._blob_name(LATEST)

        def read():
            blob = self._get_bucket().get_blob(name, timeout=30, retry=_retry())
            if blob is None:  # get_blob hides the 404, also for a missing bucket
                if not self._bucket_exists():
                    raise StoreUnreachable(f"gs://{self.bucket_name}/{name}: bucket gs://{self.bucket_name} "
                                           "does not exist")
                return None, None
            raw = blob.download_as_bytes(if_generation_match=blob.generation, timeout=30, retry=_retry())
            return _parse_pointer(raw, f"gs://{self.bucket_name}/{name}"), blob.generation

        return self._call(f"gs://{self.bucket_name}/{name}", read)

    def swap_latest(self, pointer, expected_token):
        name = self._blob_name(LATEST)
        self._call(f"move gs://{self.bucket_name}/{name}",
                   lambda: self._get_bucket().blob(name).upload_from_string(
                       _dump_pointer(pointer), content_type="application/json",
                       if_generation_match=expected_token or 0, timeout=30, retry=_retry()))

    def list_versions(self):
        prefix = self._blob_name(MODELS) + "/"

        def names():
            it = self._get_bucket().client.list_blobs(self.bucket_name, prefix=prefix, delimiter="/",
                                                      retry=_retry())
            list(it)  # the prefixes are filled in while iterating
            return sorted(p[len(prefix):].strip("/") for p in it.prefixes)

        return self._call(f"list gs://{self.bucket_name}/{prefix}", names)


def _atomic_write(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _dump_pointer(pointer):
    return (json.dumps(pointer, sort_keys=True) + "\n").encode()


def _parse_pointer(raw, name):
    try:
        pointer = json.loads(raw)
        if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
            raise ValueError("no 'version' string")
        return pointer
    except ValueError as e:
        raise StoreError(f"{name} is not a valid pointer ({e}); expected JSON like {{\"version\": \"...\"}}") from e


def load_verified(store, version):
    """Fetch ``version`` and check model.onnx against the sha256 in model.json.

    Returns (model_bytes, meta dict). Raises StoreError on a missing file, bad JSON or a
    checksum mismatch, so a half-written or corrupt upload is never used.
    """
    meta_raw = store.read_bytes(f"{MODELS}/{version}/model.json")
    try:
        meta = json.loads(meta_raw)
        expected = meta["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{store.uri}/{MODELS}/{version}/model.json is not valid model metadata ({e})") from e
    model = store.read_bytes(f"{MODELS}/{version}/model.onnx")
    actual = sha256_hex(model)
    if actual != expected:
        raise StoreError(f"{store.uri}/{MODELS}/{version}/model.onnx: sha256 {actual[:12]}... does not match "
                         f"model.json ({str(expected)[:12]}...); the upload is corrupt or incomplete")
    return model, meta
