"""Download the official MNIST files from a list of mirrors, verify and cache them.

Each file is tried on each mirror in order, with retries and exponential backoff for
errors that may pass (timeouts, resets, HTTP 5xx). A file whose checksum is wrong is
rejected and the next mirror is tried. Files are written to a temporary name and
renamed only once verified, so a crash never leaves half a file under the final name;
a cached file is verified again before it is used. Only the standard library is used.

    python -m training.download --data-dir .data/mnist     # e.g. to fill a PVC once
"""
import argparse
import hashlib
import http.client
import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request

# Tried in this order. torchvision uses the first two; the original site is often slow.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

# The well-known MD5s of the official files (a 64-hex-digit value is taken as SHA-256).
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


class DownloadError(Exception):
    """A file could not be fetched and verified from any mirror.

    ``failures`` lists "mirror: what happened" for each mirror tried.
    """

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class _MirrorFailed(Exception):
    """This mirror cannot give us this file; try the next one."""


def download_mnist(data_dir, mirrors=None, checksums=None, retries=2, backoff=1.0, timeout=30.0, log=print):
    """Make sure every file in ``checksums`` is in ``data_dir``, verified; return {name: path}.

    ``mirrors`` is an ordered list of base URLs (default MIRRORS); ``checksums`` maps file
    name to its MD5 or SHA-256 hex digest (default CHECKSUMS, the official files).
    ``retries`` extra attempts per mirror wait ``backoff``, 2*``backoff``, ... seconds;
    ``timeout`` is the socket timeout in seconds. Raises DownloadError naming what each
    mirror did when a file cannot be had from any of them.
    """
    mirrors = list(mirrors or MIRRORS)
    checksums = dict(checksums or CHECKSUMS)
    os.makedirs(data_dir, exist_ok=True)
    return {name: _fetch(name, expected.lower(), data_dir, mirrors, retries, backoff, timeout, log)
            for name, expected in checksums.items()}


def file_digest(path, expected):
    """Hex digest of ``path`` with the algorithm that ``expected`` implies (MD5 or SHA-256)."""
    h = _hasher(expected)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _hasher(expected):
    if len(expected) == 64:
        return hashlib.sha256()
    return hashlib.md5(usedforsecurity=False)  # MD5 is what the MNIST mirrors publish


def _fetch(name, expected, data_dir, mirrors, retries, backoff, timeout, log):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
        actual = file_digest(path, expected)
        if actual == expected:
            log(f"{name}: cached in {data_dir}, checksum ok")
            return path
        log(f"{name}: cached copy in {data_dir} has checksum {actual}, expected {expected}; downloading it again")
        os.unlink(path)

    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        try:
            _from_mirror(url, path, expected, retries, backoff, timeout, log)
            return path
        except _MirrorFailed as e:
            log(f"{url}: {e}")
            failures.append(f"{base}: {e}")
    raise DownloadError(
        f"could not download {name} from any of {len(mirrors)} mirror(s):\n  " + "\n  ".join(failures) +
        "\nCheck network access, list working mirrors in MNIST_MIRRORS, or use the bundled sample (--data bundled).",
        failures)


def _from_mirror(url, path, expected, retries, backoff, timeout, log):
    """Download ``url`` to ``path`` with retries; raise _MirrorFailed saying why not."""
    for attempt in range(retries + 1):
        try:
            _download_verified(url, path, expected, timeout, log)
            return
        except urllib.error.HTTPError as e:
            why = f"HTTP {e.code} {e.reason}"
            if e.code < 500 and e.code not in (408, 429):
                raise _MirrorFailed(why) from None  # 404, 403...: asking again will not help
        except urllib.error.URLError as e:
            why = f"cannot connect ({e.reason})"
            if isinstance(e.reason, socket.gaierror) and e.reason.errno == socket.EAI_NONAME:
                raise _MirrorFailed(why) from None  # DNS says the host does not exist
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, short reads
            why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if attempt < retries:
            delay = backoff * 2 ** attempt
            log(f"{url}: {why}; retry {attempt + 1}/{retries} in {delay:g} s")
            time.sleep(delay)
    raise _MirrorFailed(f"{why} (gave up after {retries + 1} attempts)")


def _download_verified(url, path, expected, timeout, log):
    name = os.path.basename(path)
    started = last_log = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        log(f"downloading {url}" + (f" ({total / 1e6:.1f} MB)" if total else ""))
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}.", suffix=".part")
        try:
            h, done = _hasher(expected), 0
            with os.fdopen(fd, "wb") as f:
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if time.monotonic() - last_log > 5:
                        last_log = time.monotonic()
                        log(f"  {name}: {done / 1e6:.1f}" + (f" of {total / 1e6:.1f}" if total else "") + " MB")
                f.flush()
                os.fsync(f.fileno())
            actual = h.hexdigest()
            if actual != expected:
                # The same mirror would serve the same wrong bytes: do not retry it.
                raise _MirrorFailed(f"checksum mismatch for {name}: got {actual}, expected {expected} "
                                    f"({done} bytes); the file is corrupt or not the official one, rejected")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    seconds = time.monotonic() - started
    log(f"  {name}: {done / 1e6:.1f} MB in {seconds:.1f} s, checksum ok")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("DATA_DIR", ".data"), "mnist"),
                        help="where to cache the files (env DATA_DIR, plus /mnist; default .data/mnist)")
    parser.add_argument("--mirrors", default=os.environ.get("MNIST_MIRRORS", ""),
                        help="comma-separated base URLs tried in order (env MNIST_MIRRORS; default: "
                             + ", ".join(MIRRORS) + ")")
    args = parser.parse_args()
    mirrors = [m.strip() for m in args.mirrors.split(",") if m.strip()] or None
    try:
        download_mnist(args.data_dir, mirrors)
    except DownloadError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
