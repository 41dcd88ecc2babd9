"""Read and write MNIST IDX files (http://yann.lecun.com/exdb/mnist/), gzipped or not.

Every problem is raised as IDXError naming the file and what is wrong with it, so a
truncated download or a swapped images/labels file is obvious from the message.
"""
import gzip
import os
import struct

import numpy as np

# IDX type codes; MNIST only uses unsigned bytes, but the format defines the rest.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08}


class IDXError(ValueError):
    """An IDX file is corrupt, truncated or not the shape it should be."""


def _read_bytes(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise IDXError(f"{path}: gzip data is corrupt or truncated ({e}); delete it and download again") from e
    return raw


def parse_idx(raw, name="<bytes>"):
    """Parse IDX bytes (already decompressed) into a numpy array."""
    if len(raw) < 4:
        raise IDXError(f"{name}: only {len(raw)} bytes, too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _DTYPES or not 1 <= ndim <= 4:
        raise IDXError(f"{name}: bad magic number 0x{raw[:4].hex()} (expected 0x0000 0801 for labels "
                       f"or 0x0000 0803 for images); this is not an IDX file")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{name}: header truncated ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IDXError(f"{name}: {what}: header says shape {list(shape)} = {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path):
    """Read one IDX file (``.gz`` or raw) into a numpy array; raises IDXError."""
    return parse_idx(_read_bytes(path), name=os.fspath(path))


def write_idx(path, array):
    """Write a uint8 array as an IDX file, gzipped when the name ends in .gz."""
    array = np.ascontiguousarray(array)
    code = _CODES[array.dtype]
    raw = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if os.fspath(path).endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(raw)
