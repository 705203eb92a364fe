"""The binary form of compiled constraints: magic bytes, a JSON header, raw numpy arrays.

No pickle: a blob from disk or another process can at worst fail its checks. The header names the
format version, the vocabulary fingerprint (a blob only loads for the vocabulary it was built
for) and every array's dtype and shape; truncation and trailing bytes are refused.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

from .errors import SerializationError

__all__ = ["read_blob", "write_blob"]


def write_blob(magic: bytes, header: dict, arrays: dict, vocabulary) -> bytes:
    """``magic`` + length-prefixed JSON ``header`` (plus the vocabulary and array descriptions) +
    the arrays' bytes in order."""
    full = dict(header)
    full["vocabulary_fingerprint"] = vocabulary.fingerprint
    full["vocabulary_size"] = vocabulary.size
    full["arrays"] = {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items()}
    hb = json.dumps(full).encode()
    buf = io.BytesIO()
    buf.write(magic)
    buf.write(struct.pack("<I", len(hb)))
    buf.write(hb)
    for a in arrays.values():
        buf.write(np.ascontiguousarray(a).tobytes())
    return buf.getvalue()


def read_blob(data: bytes, magic: bytes, format_version: int, vocabulary) -> tuple[dict, dict]:
    """``(header, arrays)`` of a blob written by :func:`write_blob` (arrays are read-only views of
    ``data``); raises :class:`SerializationError` on any inconsistency."""
    try:
        if data[: len(magic)] != magic:
            raise SerializationError("not a dotvllm compiled grammar (bad magic bytes)")
        (hlen,) = struct.unpack_from("<I", data, len(magic))
        off = len(magic) + 4
        header = json.loads(data[off : off + hlen])
        off += hlen
        if not isinstance(header, dict):
            raise ValueError("the header is not an object")
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        if isinstance(e, SerializationError):
            raise
        raise SerializationError(f"corrupt compiled grammar header: {e}") from e
    if header.get("format_version") != format_version:
        raise SerializationError(
            f"compiled grammar format version {header.get('format_version')} is not supported "
            f"(expected {format_version}); recompile it"
        )
    if header.get("vocabulary_fingerprint") != vocabulary.fingerprint:
        raise SerializationError(
            f"compiled grammar was built for vocabulary {str(header.get('vocabulary_fingerprint'))[:12]} "
            f"(size {header.get('vocabulary_size')}), not {vocabulary.fingerprint[:12]} (size {vocabulary.size})"
        )
    arrays = {}
    try:
        for name, (dtype, shape) in header["arrays"].items():
            count = int(np.prod(shape))
            n = count * np.dtype(dtype).itemsize
            if off + n > len(data):
                raise SerializationError(f"compiled grammar is truncated (array {name!r})")
            arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=off).reshape(shape)
            off += n
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, SerializationError):
            raise
        raise SerializationError(f"corrupt compiled grammar header: {e}") from e
    if off != len(data):
        raise SerializationError("compiled grammar has trailing bytes")
    return header, arrays
