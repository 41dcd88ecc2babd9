"""The store client: one way to read and write a directory, a PVC mount or ``gs://bucket/prefix``.

Training publishes models, mirrors checkpoints, writes reports and reads data through it;
the service loads models and writes feedback records through it (the layouts are in
service/contract.py). Keys are ``/``-separated paths below the store's root.

- ``create`` never overwrites: ``O_EXCL`` semantics on a filesystem (a hard link from a
  finished temporary file, so the name appears complete or not at all), and
  ``if_generation_match=0`` on GCS. An existing key raises AlreadyExists.
- ``put`` replaces a key whole (a temporary file renamed over it; one GCS upload).
- ``read_latest``/``swap_latest``: compare-and-swap on models/LATEST. Every read returns a
  token (the GCS object generation, or the file's bytes on disk), and a swap succeeds only
  while LATEST still holds it, so two writers cannot both win silently.

It imports neither Flask nor torch, and google-cloud-storage only for ``gs://`` stores,
which keeps the service's cold start short. With STORAGE_EMULATOR_HOST set, the GCS client
talks to that emulator (fake-gcs-server) anonymously.
"""
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile

from . import contract

# How long one GCS call retries transient errors (connection refused, 5xx, timeouts)
# before it reports the store unreachable. The client's own default is 120 s, which keeps
# an unreachable bucket silent for two minutes; callers retry with backoff on top of this.
GCS_RETRY_SECONDS = 15
TEMP_PREFIX = ".tmp-"


@functools.cache
def _retry():
    """The retry policy of every GCS call: the client's own, cut to GCS_RETRY_SECONDS."""
    from google.cloud.storage.retry import DEFAULT_RETRY  # lazy, like the client

    return DEFAULT_RETRY.with_timeout(GCS_RETRY_SECONDS)


class StoreError(Exception):
    """Base class for store problems; the message names the store, the key and what to do."""


class StoreUnreachable(StoreError):
    """The store could not be reached (network, credentials, missing bucket or mount)."""


class StoreNotFound(StoreError):
    """The store is reachable but the key does not exist."""


class AlreadyExists(StoreError):
    """``create`` found the key already there; nothing was written."""


class PointerConflict(StoreError):
    """LATEST changed between our read and our write: another writer won."""


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

    def path(self, key):
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def _check_root(self):
        if not os.path.isdir(self.root):
            raise StoreUnreachable(f"store directory {self.root} does not exist (is the volume mounted?)")

    def read(self, key):
        self._check_root()
        try:
            with open(self.path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StoreNotFound(f"{self.path(key)} not found") from None
        except OSError as e:
            raise StoreUnreachable(f"cannot read {self.path(key)}: {e}") from e

    def exists(self, key):
        return os.path.isfile(self.path(key))

    def create(self, key, data):
        """Write a new key; AlreadyExists if it is there (then nothing is written)."""
        path = self.path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = _temp_file(path, data)
            try:
                os.link(tmp, path)  # atomic, and fails if the name exists
            except FileExistsError:
                raise AlreadyExists(f"{path} already exists; it is immutable, nothing was written") from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                    raise
                _create_in_place(path, data)  # a filesystem without hard links
            finally:
                os.unlink(tmp)
        except StoreError:
            raise
        except OSError as e:
            raise StoreUnreachable(f"cannot write {path}: {e}") from e

    def put(self, key, data):
        """Write ``key`` whole, replacing what was there."""
        path = self.path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = _temp_file(path, data)
            try:
                os.replace(tmp, path)
            except OSError:
                os.unlink(tmp)
                raise
        except OSError as e:
            raise StoreUnreachable(f"cannot write {path}: {e}") from e

    def delete(self, key):
        """Delete ``key`` and, if it is a prefix, everything below it; a missing key is fine."""
        path = self.path(key)
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreUnreachable(f"cannot delete {path}: {e}") from e

    def list(self, prefix=""):
        """Every key below ``prefix`` (a directory), sorted; none if the prefix does not exist.
        A missing store directory is StoreUnreachable: an unmounted volume must not look empty."""
        self._check_root()
        top, keys = self.path(prefix), []
        for dirpath, dirnames, files in os.walk(top):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            keys += [f for f in (f if rel == "." else f"{rel}/{f}" for f in files if _listed(f))]
        return sorted(keys)

    def children(self, prefix=""):
        """The names directly below ``prefix`` that have keys below them (subdirectories), sorted."""
        top = self.path(prefix)
        try:
            return sorted(n for n in os.listdir(top) if os.path.isdir(os.path.join(top, n)) and _listed(n))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise StoreUnreachable(f"cannot list {top}: {e}") from e

    def md5(self, key):
        """The hex MD5 of ``key``'s bytes, or None if it does not exist."""
        try:
            with open(self.path(key), "rb") as f:
                return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreUnreachable(f"cannot read {self.path(key)}: {e}") from e

    def list_versions(self):
        """The model versions in the store, oldest first (their names sort by time)."""
        return self.children(contract.MODELS)

    def read_latest(self):
        """Return (pointer dict or None, token) for LATEST."""
        try:
            raw = self.read(contract.LATEST)
        except StoreNotFound:
            return None, None
        return _parse_pointer(raw, self.path(contract.LATEST)), raw

    def swap_latest(self, pointer, expected_token):
        """Point LATEST at ``pointer`` if it still holds ``expected_token`` (None: must not exist)."""
        path = self.path(contract.LATEST)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = open(path + ".lock", "a")
        except OSError as e:
            raise StoreUnreachable(f"cannot write {path}: {e}") from e
        # The lock makes check-then-rename one step between writers on this filesystem;
        # the rename makes the new pointer appear whole to readers, who take no lock.
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(path, "rb") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != expected_token:
                raise PointerConflict(f"{path} changed since it was read; another writer moved it")
            self.put(contract.LATEST, _dump_pointer(pointer))


class GCSStore:
    """A store in a Google Cloud Storage bucket, under an optional prefix."""

    def __init__(self, bucket, prefix=""):
        self.bucket_name, self.prefix = bucket, prefix
        self.uri = f"gs://{bucket}/{prefix}".rstrip("/")
        self._bucket = None

    def _name(self, key):
        return "/".join(p for p in (self.prefix, key) if p)

    def _where(self, key):
        return f"gs://{self.bucket_name}/{self._name(key)}"

    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage  # lazy: a 0.3 s import the local store never needs

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(project="local", credentials=AnonymousCredentials())
            else:
                client = storage.Client()
            self._bucket = client.bucket(self.bucket_name)
        return self._bucket

    def _call(self, what, fn, precondition=PointerConflict):
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
            if precondition is AlreadyExists:
                raise AlreadyExists(f"{what}: the object already exists; it is immutable, nothing was written") from e
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
            list(self.bucket().client.list_blobs(self.bucket_name, max_results=1, timeout=30, retry=_retry()))
        except gexc.NotFound:
            return False
        except Exception:  # can't tell: report the original 404 as a missing object
            return True
        return True

    def read(self, key):
        name = self._name(key)
        return self._call(self._where(key),
                          lambda: self.bucket().blob(name).download_as_bytes(timeout=30, retry=_retry()))

    def exists(self, key):
        return self.md5(key) is not None

    def create(self, key, data):
        """Write a new object; AlreadyExists if it is there (if_generation_match=0)."""
        name = self._name(key)
        self._call(f"upload {self._where(key)}",
                   lambda: self.bucket().blob(name).upload_from_string(
                       data, if_generation_match=0, timeout=120, retry=_retry()), precondition=AlreadyExists)

    def put(self, key, data):
        name = self._name(key)
        self._call(f"upload {self._where(key)}",
                   lambda: self.bucket().blob(name).upload_from_string(data, timeout=120, retry=_retry()))

    def delete(self, key):
        """Delete ``key`` and every object below it as a prefix; a missing key is fine."""
        from google.api_core import exceptions as gexc

        def delete():
            names = [self._name(key)] + [self._name(k) for k in self._list(key)]
            for name in names:
                try:
                    self.bucket().blob(name).delete(timeout=30, retry=_retry())
                except gexc.NotFound:
                    pass

        self._call(f"delete {self._where(key)}", delete)

    def _list(self, prefix):
        full = self._name(prefix).rstrip("/") + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        root = self.prefix + "/" if self.prefix else ""
        blobs = self.bucket().client.list_blobs(self.bucket_name, prefix=full, retry=_retry())
        return sorted(b.name[len(root):] for b in blobs)

    def list(self, prefix=""):
        """Every key below ``prefix``, sorted."""
        return self._call(f"list {self._where(prefix)}", lambda: self._list(prefix))

    def children(self, prefix=""):
        """The names directly below ``prefix`` that have keys below them, sorted."""
        full = self._name(prefix).rstrip("/") + "/" if prefix else (self.prefix + "/" if self.prefix else "")

        def names():
            it = self.bucket().client.list_blobs(self.bucket_name, prefix=full, delimiter="/", retry=_retry())
            list(it)  # the prefixes are filled in while iterating
            return sorted(p[len(full):].strip("/") for p in it.prefixes)

        return self._call(f"list {self._where(prefix)}", names)

    def md5(self, key):
        """The hex MD5 GCS keeps for ``key``, "" for an object without one (a composite
        object), or None if it does not exist."""
        import base64

        def md5():
            blob = self.bucket().get_blob(self._name(key), timeout=30, retry=_retry())
            if blob is None:
                if not self._bucket_exists():
                    raise StoreUnreachable(f"{self._where(key)}: bucket gs://{self.bucket_name} does not exist")
                return None
            return base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else ""

        return self._call(self._where(key), md5)

    def list_versions(self):
        """The model versions in the store, oldest first (their names sort by time)."""
        return self.children(contract.MODELS)

    def read_latest(self):
        name = self._name(contract.LATEST)

        def read():
            blob = self.bucket().get_blob(name, timeout=30, retry=_retry())
            if blob is None:  # get_blob hides the 404, also for a missing bucket
                if not self._bucket_exists():
                    raise StoreUnreachable(f"gs://{self.bucket_name}/{name}: bucket gs://{self.bucket_name} "
                                           "does not exist")
                return None, None
            raw = blob.download_as_bytes(if_generation_match=blob.generation, timeout=30, retry=_retry())
            return _parse_pointer(raw, f"gs://{self.bucket_name}/{name}"), blob.generation

        return self._call(f"gs://{self.bucket_name}/{name}", read)

    def swap_latest(self, pointer, expected_token):
        name = self._name(contract.LATEST)
        self._call(f"move gs://{self.bucket_name}/{name}",
                   lambda: self.bucket().blob(name).upload_from_string(
                       _dump_pointer(pointer), content_type="application/json",
                       if_generation_match=expected_token or 0, timeout=30, retry=_retry()))


def _listed(name):
    return not name.startswith(TEMP_PREFIX) and not name.endswith(".lock")


def _temp_file(path, data):
    """A finished, flushed temporary file beside ``path`` holding ``data``; returns its path."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _create_in_place(path, data):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise AlreadyExists(f"{path} already exists; it is immutable, nothing was written") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
    """Fetch ``version`` and check it: model.json parses and names this version, and
    model.onnx has the sha256 model.json records.

    Returns (model_bytes, meta dict). Raises StoreError on a missing file, bad JSON, a
    version mismatch or a checksum mismatch, so a half-written or corrupt upload is never used.
    """
    where = f"{store.uri}/{contract.model_key(version, contract.META_FILE)}"
    meta_raw = store.read(contract.model_key(version, contract.META_FILE))
    try:
        meta = json.loads(meta_raw)
        expected = meta["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{where} is not valid model metadata ({type(e).__name__}: {e})") from e
    if meta.get("version", version) != version:
        raise StoreError(f"{where} says version {str(meta.get('version'))[:80]!r}, but it is in the directory of "
                         f"{version}; republish the model rather than copying a version directory")
    model = store.read(contract.model_key(version, contract.MODEL_FILE))
    actual = sha256_hex(model)
    if actual != expected:
        raise StoreError(f"{store.uri}/{contract.model_key(version, contract.MODEL_FILE)}: sha256 {actual[:12]}... "
                         f"does not match model.json ({str(expected)[:12]}...); the upload is corrupt or incomplete")
    return model, {**meta, "version": version}
