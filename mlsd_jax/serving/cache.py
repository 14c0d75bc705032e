"""Response cache: outputs keyed by model, version, signature and the request's tensors.

Entries expire after ``ttl_s``; the total size of cached outputs stays under ``max_bytes``
(least recently used first out). A new model version has new keys, so a hot swap never serves
the old version's answers. Fallback answers are never cached.
"""
from __future__ import annotations

import collections
import hashlib
import threading
import time
from typing import Mapping

import numpy as np


def request_key(model: str, version: int, signature: str,
                arrays: Mapping[str, np.ndarray]) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{model}\0{version}\0{signature}".encode())
    for name in sorted(arrays):
        x = arrays[name]
        h.update(f"\0{name}\0{x.dtype.str}\0{x.shape}".encode())
        if x.dtype == object:
            for v in x.reshape(-1):
                b = v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape")
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
        else:
            h.update(np.ascontiguousarray(x).tobytes())
    return h.digest()


class ResponseCache:
    def __init__(self, ttl_s: float, max_bytes: int):
        self.ttl_s, self.max_bytes = ttl_s, max_bytes
        self._entries: collections.OrderedDict[bytes, tuple[float, int, dict]] = \
            collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> dict | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, size, outputs = entry
            if expires <= now:
                del self._entries[key]
                self._bytes -= size
                return None
            self._entries.move_to_end(key)
            return outputs

    def put(self, key: bytes, outputs: Mapping[str, np.ndarray]) -> None:
        size = sum(np.asarray(v).nbytes for v in outputs.values()) + len(key) + 64
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (time.monotonic() + self.ttl_s, size, dict(outputs))
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped, _) = self._entries.popitem(last=False)
                self._bytes -= dropped
