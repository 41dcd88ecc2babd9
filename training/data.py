"""MNIST for training: the bundled sample, full MNIST, or IDX files in a directory or GCS.

``load_mnist(source)`` returns uint8 arrays split into train / validation (/ test).
The validation split is fixed, so every run and every worker holds out the same
digits, and training never sees them:

- ``bundled``: the 30,000 digits in training/sample/ (the first half of the official
  training set). The file is pre-shuffled, so the last 1,000 are the validation split.
- ``mnist``: the official files, downloaded from mirrors and cached in DATA_DIR/mnist.
  A fixed 5,000 of the 60,000 training digits (seed 0) are the validation split; the
  official t10k set is returned as the test set, never used for decisions.
- a directory (local or PVC mount) or ``gs://bucket/prefix`` holding the IDX files
  (``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, gzipped or not, and
  optionally the two ``t10k-`` files). A fixed min(5,000, N/10) of the training
  digits (seed 0) are the validation split. GCS files are cached in DATA_DIR/gcs/.
- ``auto``: full MNIST if it is cached or can be downloaded, else the bundled sample.

Problems raise DataError (bad source), DownloadError or IDXError (bad file, named);
``DATA_ERRORS`` holds all three for a CLI to catch.
"""
import dataclasses
import hashlib
import os
import tempfile

import numpy as np

from service.store import StoreError, open_store
from training.download import DownloadError, download_mnist, file_digest
from training.idx import IDXError, read_idx

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample")
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
SPLIT_SEED = 0

SOURCE_HELP = ("training data: auto (full MNIST if cached or downloadable, else bundled), bundled (30,000 digits "
               "shipped in training/sample), mnist (download the official files), a directory or PVC path "
               "holding the IDX files (gzipped or not), or gs://bucket/prefix")
DATA_DIR_HELP = "where downloaded and GCS data is cached; may be on a PVC"
MIRRORS_HELP = "comma-separated MNIST mirror base URLs, tried in order (default: the official mirrors)"


class DataError(Exception):
    """The data source is not usable (unknown name, missing directory or files, GCS error)."""


DATA_ERRORS = (DataError, DownloadError, IDXError)


@dataclasses.dataclass
class MNISTData:
    """uint8 images [N, 28, 28] (ink 255, background 0) and uint8 labels [N]."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray | None = None  # the official test set, when the source has it
    test_y: np.ndarray | None = None
    source: str = ""  # human-readable: which data this is and how it was split


def parse_mirrors(text):
    """'url1,url2' -> ['url1', 'url2']; empty -> None (the defaults)."""
    if not text:
        return None
    if not isinstance(text, str):
        return list(text)
    return [m.strip() for m in text.split(",") if m.strip()] or None


def load_mnist(source="auto", data_dir=".data", mirrors=None, log=print,
               checksums=None, retries=2, backoff=1.0):
    """Load ``source`` (see the module docstring) and split it; returns MNISTData.

    ``mirrors`` is a list or a comma-separated string of base URLs. ``checksums``,
    ``retries`` and ``backoff`` are passed to download_mnist (tests use their own).
    """
    mirrors, source = parse_mirrors(mirrors), os.fspath(source)
    if source == "bundled":
        return _load_bundled(log)
    if source in ("mnist", "auto"):
        cache = os.path.join(data_dir, "mnist")
        try:
            download_mnist(cache, mirrors, checksums, retries=retries, backoff=backoff, log=log)
        except DownloadError as e:
            if source == "mnist":
                raise
            log(f"data: auto uses the bundled sample because full MNIST is not cached in {cache} and no "
                f"mirror gave it: {'; '.join(e.failures) or e}")
            return _load_bundled(log)
        data = _load_dir(cache, f"full MNIST (cached in {cache})")
        log(f"data: {'auto chose ' if source == 'auto' else ''}{data.source}")
        return data
    if source.startswith("gs://"):
        local = _fetch_gcs(source, data_dir, log)
        data = _load_dir(local, f"IDX files from {source} (cached in {local})")
    elif os.path.isdir(source):
        data = _load_dir(source, f"IDX files in {os.path.abspath(source)}")
    else:
        raise DataError(f"data source {source!r} is not auto, bundled, mnist, gs://bucket/prefix "
                        f"or an existing directory")
    log(f"data: {data.source}")
    return data


def _load_bundled(log):
    x, y = read_pair(SAMPLE_DIR, TRAIN_IMAGES, TRAIN_LABELS)
    n_val = 1000  # the file is pre-shuffled (training/make_sample.py): the tail is a fair sample
    data = MNISTData(x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:],
                     source=f"bundled sample: {len(y):,} MNIST training digits "
                            f"({len(y) - n_val:,} train, last {n_val:,} validation)")
    log(f"data: {data.source}")
    return data


def _load_dir(directory, what):
    x, y = read_pair(directory, TRAIN_IMAGES, TRAIN_LABELS)
    test_x = test_y = None
    have_test = [_find(directory, n) for n in (TEST_IMAGES, TEST_LABELS)]
    if any(have_test):
        test_x, test_y = read_pair(directory, TEST_IMAGES, TEST_LABELS)
    # A fixed random subset, the same on every run and every worker.
    n_val = min(5000, len(y) // 10)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    source = f"{what}: {len(train):,} train, {n_val:,} validation (seed {SPLIT_SEED})"
    if test_y is not None:
        source += f", {len(test_y):,} test"
    return MNISTData(x[train], y[train], x[val], y[val], test_x, test_y, source)


def _find(directory, base):
    for name in (base + ".gz", base):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def read_pair(directory, images_base, labels_base):
    """Read matching image and label files; raise naming the file and the problem."""
    paths = [_find(directory, base) for base in (images_base, labels_base)]
    missing = [base for base, path in zip((images_base, labels_base), paths) if path is None]
    if missing:
        present = sorted(os.listdir(directory)) if os.path.isdir(directory) else "directory does not exist"
        raise DataError(f"{directory}: missing {' and '.join(m + '[.gz]' for m in missing)} (found: {present})")
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXError(f"{images_path}: images are {images.dtype} of shape {list(images.shape)}, "
                       f"expected uint8 [N, 28, 28]; is this an MNIST images (idx3) file?")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXError(f"{labels_path}: labels are {labels.dtype} of shape {list(labels.shape)}, "
                       f"expected uint8 [N]; is this an MNIST labels (idx1) file?")
    if len(images) != len(labels):
        raise IDXError(f"{images_path} has {len(images):,} images but {labels_path} has {len(labels):,} labels; "
                       f"the two files do not belong together")
    if len(labels) and labels.max() > 9:
        raise IDXError(f"{labels_path}: label {int(labels.max())} is not a digit 0-9")
    return images, labels


def _fetch_gcs(uri, data_dir, log):
    """Copy the IDX files under gs://bucket/prefix to DATA_DIR/gcs/bucket/prefix; return that path.

    A cached file is reused only if its MD5 matches the object's, so a changed object is fetched again.
    """
    try:
        store = open_store(uri)
    except ValueError as e:
        raise DataError(f"data source {uri!r}: {e}") from None
    local = os.path.join(data_dir, "gcs", store.bucket_name, *store.prefix.split("/"))
    os.makedirs(local, exist_ok=True)
    found = 0
    try:
        bases = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
        for name in (base + ext for base in bases for ext in ("", ".gz")):
            md5 = store.md5(name)
            if md5 is None:
                continue
            found += 1
            path = os.path.join(local, name)
            if md5 and os.path.exists(path) and file_digest(path, md5) == md5:
                log(f"{uri}/{name}: cached in {local}, checksum ok")
                continue
            log(f"downloading {store.uri}/{name}")
            data = store.read(name)
            if md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
                raise DataError(f"{store.uri}/{name}: the download does not match the object's MD5; try again")
            fd, tmp = tempfile.mkstemp(dir=local, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except StoreError as e:
        raise DataError(f"{uri}: cannot read the training data: {e}") from e
    if not found:
        raise DataError(f"{uri}: no MNIST IDX files there (expected {TRAIN_IMAGES}[.gz] and {TRAIN_LABELS}[.gz])")
    return local
