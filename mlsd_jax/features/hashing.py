"""String hashing that numpy and TensorFlow compute identically.

Hashed ids use FarmHash ``Fingerprint64`` of the UTF-8 bytes, the function behind TensorFlow's
``tf.strings.to_hash_bucket_fast``: ``bucket = Fingerprint64(bytes) % num_buckets``. On the
numpy side the C implementation from ``pyfarmhash`` is used when it is installed; otherwise a
pure-Python port of the same algorithm (``farmhashna::Hash64``, which ``Fingerprint64`` is
defined as) gives the same numbers, more slowly. Integers are hashed as their decimal text, which
``str(int)`` and ``tf.strings.as_string`` spell the same way.
"""
from __future__ import annotations

import struct
from typing import Iterable, Sequence

import numpy as np

__all__ = ["fingerprint64", "fingerprint64_py", "hash_bucket_np", "hash_bucket_tf",
           "int_strings"]

_M64 = (1 << 64) - 1
_K0 = 0xC3A5C85C97CB3127
_K1 = 0xB492B66FBE98F273
_K2 = 0x9AE16A3B2F90404F
_KMUL = 0x9DDFEA08EB382D69
MAX_BUCKETS = 2 ** 31 - 2  # ids are int32 and id 0 is reserved, so buckets + 1 must fit


def _rot(v: int, s: int) -> int:
    return ((v >> s) | (v << (64 - s))) & _M64 if s else v


def _smix(v: int) -> int:
    return v ^ (v >> 47)


def _f64(s: bytes, i: int) -> int:
    return struct.unpack_from("<Q", s, i)[0]


def _f32(s: bytes, i: int) -> int:
    return struct.unpack_from("<I", s, i)[0]


def _len16(u: int, v: int, mul: int = _KMUL) -> int:
    a = ((u ^ v) * mul) & _M64
    a ^= a >> 47
    b = ((v ^ a) * mul) & _M64
    b ^= b >> 47
    return (b * mul) & _M64


def _len0to16(s: bytes, n: int) -> int:
    if n >= 8:
        mul = _K2 + n * 2
        a = (_f64(s, 0) + _K2) & _M64
        b = _f64(s, n - 8)
        c = (_rot(b, 37) * mul + a) & _M64
        d = ((_rot(a, 25) + b) * mul) & _M64
        return _len16(c, d, mul)
    if n >= 4:
        mul = _K2 + n * 2
        return _len16((n + (_f32(s, 0) << 3)) & _M64, _f32(s, n - 4), mul)
    if n > 0:
        y = s[0] + (s[n >> 1] << 8)
        z = n + (s[n - 1] << 2)
        return (_smix(((y * _K2) ^ (z * _K0)) & _M64) * _K2) & _M64
    return _K2


def _len17to32(s: bytes, n: int) -> int:
    mul = _K2 + n * 2
    a = (_f64(s, 0) * _K1) & _M64
    b = _f64(s, 8)
    c = (_f64(s, n - 8) * mul) & _M64
    d = (_f64(s, n - 16) * _K2) & _M64
    return _len16((_rot((a + b) & _M64, 43) + _rot(c, 30) + d) & _M64,
                  (a + _rot((b + _K2) & _M64, 18) + c) & _M64, mul)


def _len33to64(s: bytes, n: int) -> int:
    mul = _K2 + n * 2
    a = (_f64(s, 0) * _K2) & _M64
    b = _f64(s, 8)
    c = (_f64(s, n - 8) * mul) & _M64
    d = (_f64(s, n - 16) * _K2) & _M64
    y = (_rot((a + b) & _M64, 43) + _rot(c, 30) + d) & _M64
    z = _len16(y, (a + _rot((b + _K2) & _M64, 18) + c) & _M64, mul)
    e = (_f64(s, 16) * mul) & _M64
    f = _f64(s, 24)
    g = ((y + _f64(s, n - 32)) * mul) & _M64
    h = ((z + _f64(s, n - 24)) * mul) & _M64
    return _len16((_rot((e + f) & _M64, 43) + _rot(g, 30) + h) & _M64,
                  (e + _rot((f + a) & _M64, 18) + g) & _M64, mul)


def _weak32(s: bytes, i: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = struct.unpack_from("<4Q", s, i)
    a = (a + w) & _M64
    b = _rot((b + a + z) & _M64, 21)
    c = a
    a = (a + x + y) & _M64
    b = (b + _rot(a, 44)) & _M64
    return (a + z) & _M64, (b + c) & _M64


def fingerprint64_py(s: bytes) -> int:
    """FarmHash ``Fingerprint64`` (``farmhashna::Hash64``) in pure Python, as an unsigned int."""
    n = len(s)
    if n <= 16:
        return _len0to16(s, n)
    if n <= 32:
        return _len17to32(s, n)
    if n <= 64:
        return _len33to64(s, n)
    x = (81 * _K2 + _f64(s, 0)) & _M64
    y = (81 * _K1 + 113) & _M64
    z = (_smix((y * _K2 + 113) & _M64) * _K2) & _M64
    v = w = (0, 0)
    end = ((n - 1) // 64) * 64
    for i in range(0, end, 64):
        x = (_rot((x + y + v[0] + _f64(s, i + 8)) & _M64, 37) * _K1) & _M64
        y = (_rot((y + v[1] + _f64(s, i + 48)) & _M64, 42) * _K1) & _M64
        x ^= w[1]
        y = (y + v[0] + _f64(s, i + 40)) & _M64
        z = (_rot((z + w[0]) & _M64, 33) * _K1) & _M64
        v = _weak32(s, i, (v[1] * _K1) & _M64, (x + w[0]) & _M64)
        w = _weak32(s, i + 32, (z + w[1]) & _M64, (y + _f64(s, i + 16)) & _M64)
        z, x = x, z
    mul = _K1 + ((z & 0xFF) << 1)
    i = end + ((n - 1) & 63) - 63
    w0 = (w[0] + ((n - 1) & 63)) & _M64
    v0 = (v[0] + w0) & _M64
    w0 = (w0 + v0) & _M64
    v, w = (v0, v[1]), (w0, w[1])
    x = (_rot((x + y + v[0] + _f64(s, i + 8)) & _M64, 37) * mul) & _M64
    y = (_rot((y + v[1] + _f64(s, i + 48)) & _M64, 42) * mul) & _M64
    x ^= (w[1] * 9) & _M64
    y = (y + v[0] * 9 + _f64(s, i + 40)) & _M64
    z = (_rot((z + w[0]) & _M64, 33) * mul) & _M64
    v = _weak32(s, i, (v[1] * mul) & _M64, (x + w[0]) & _M64)
    w = _weak32(s, i + 32, (z + w[1]) & _M64, (y + _f64(s, i + 16)) & _M64)
    z, x = x, z
    return _len16((_len16(v[0], w[0], mul) + _smix(y) * _K0 + z) & _M64,
                  (_len16(v[1], w[1], mul) + x) & _M64, mul)


try:  # the C implementation (pyfarmhash) when installed: ~50x faster, same numbers
    from farmhash import fingerprint64 as _fingerprint64_c
except ImportError:  # pragma: no cover - exercised where pyfarmhash is not installed
    _fingerprint64_c = None

fingerprint64 = _fingerprint64_c or fingerprint64_py
"""``Fingerprint64(bytes) -> int`` (unsigned), C when pyfarmhash is installed."""


def hash_bucket_np(strings: Iterable[str], num_buckets: int) -> np.ndarray:
    """``Fingerprint64(utf8(s)) % num_buckets`` for each string, as int64. Lone surrogates from
    ``surrogateescape`` decoding become their original bytes again, so undecodable client bytes
    hash as TensorFlow sees them."""
    fp, strings = fingerprint64, list(strings)
    # Repeated values (categories, common n-grams) are hashed once.
    buckets = {s: fp(s.encode("utf-8", "surrogateescape")) % num_buckets
               for s in dict.fromkeys(strings)}
    return np.fromiter(map(buckets.__getitem__, strings), np.int64, len(strings))


def hash_bucket_tf(strings, num_buckets: int):
    """TensorFlow twin of :func:`hash_bucket_np` (int64 tensor of ``strings``' shape)."""
    import tensorflow as tf
    return tf.strings.to_hash_bucket_fast(strings, num_buckets)


def int_strings(values: Sequence[int]) -> list[str]:
    """Decimal text of integers, as ``tf.strings.as_string`` writes int64."""
    return [str(int(v)) for v in values]
