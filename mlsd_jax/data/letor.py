"""LETOR / SVMlight-with-qid ranking files, converted once into memory-mapped stores.

Line format (MSLR-WEB10K/30K, LETOR 4.0 MQ2007/MQ2008, Istella, Yahoo LTR)::

    <label> qid:<id> <index>:<value> <index>:<value> ... [# comment]

Feature indices are 1-based; indices missing from a line are 0 (sparse files).
Blank lines and comment-only lines are skipped.  A query's documents must be on
consecutive lines.

:func:`build_query_store` converts a text file in one streaming pass (plus a
pre-pass to find the number of features when it is not given) into a folder of
``.npy`` arrays; peak memory is bounded by the chunk size, not the file size.
:func:`open_letor` does the same into the data cache and reuses the result.

Parsing is vectorised per chunk: the line/token/colon structure is checked with
numpy on the raw bytes and the numbers are converted by Arrow's string-to-double
cast.  Any chunk the fast path does not accept is re-parsed line by line, which
either finds the exact offending line or handles the rare legal oddity.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Iterator, Optional, Sequence

import numpy as np

__all__ = [
    "LetorFormatError",
    "QueryStore",
    "build_query_store",
    "open_letor",
    "parse_letor_lines",
]

_EXPECTED = "'<label> qid:<id> <index>:<value> ...'"
_COMMENT = re.compile(rb"#[^\n]*")
_HEADER_BYTES = 128  # fixed .npy header size so the shape can be patched in place
_FORMAT = "mlsd_jax.letor/1"


class LetorFormatError(ValueError):
    """A malformed line; the message names ``path:line``."""

    def __init__(self, path, lineno: int, what: str, line):
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = line.rstrip("\r\n")
        self.path = str(path)
        self.lineno = lineno
        self.what = what
        self.line = line
        super().__init__(f"{path}:{lineno}: {what}; expected {_EXPECTED}, got '{line[:80]}'")


# --------------------------------------------------------------------------- parsing


class _Parsed:
    """Rows of one chunk: line index (within chunk), label, qid, and sparse pairs."""

    __slots__ = ("line_idx", "labels", "qids", "rows", "idx", "vals")

    def __init__(self, line_idx, labels, qids, rows, idx, vals):
        self.line_idx, self.labels, self.qids = line_idx, labels, qids
        self.rows, self.idx, self.vals = rows, idx, vals

    @property
    def n(self) -> int:
        return int(self.labels.size)

    def dense(self, num_features: int) -> np.ndarray:
        x = np.zeros((self.n, num_features), np.float32)
        if self.idx.size:
            if self.idx.size == x.size and np.array_equal(
                self.idx.reshape(self.n, num_features), np.broadcast_to(np.arange(1, num_features + 1), x.shape)
            ):
                x[...] = self.vals.reshape(x.shape)
            else:
                x[self.rows, self.idx - 1] = self.vals
        return x


def _parse_fast(text: bytes) -> Optional[_Parsed]:
    """Vectorised parse of complete lines; ``None`` if anything looks off."""
    import pyarrow as pa
    import pyarrow.compute as pc

    buf = np.frombuffer(text, np.uint8)
    n = buf.size
    if n >= 2**31 - 1:
        return None
    ws = buf <= 32
    starts = ~ws
    starts[1:] &= ws[:-1]
    ts = np.flatnonzero(starts)
    del starts
    T = ts.size
    nl = np.flatnonzero(buf == 10)
    L = nl.size
    line_starts = np.empty(L + 1, np.int64)
    line_starts[0] = 0
    line_starts[1:] = nl + 1
    ft = np.searchsorted(ts, line_starts)  # first token of each line (ft[L] == T)
    ntok = np.diff(ft)
    if np.any(ntok == 1):
        return None
    nonblank = np.flatnonzero(ntok > 0)
    first_tok = ft[:-1][nonblank]
    ntok_nb = ntok[nonblank]
    R = nonblank.size
    if R == 0:
        e = np.empty(0)
        return _Parsed(np.empty(0, np.int64), e, np.empty(0, np.int64), np.empty(0, np.int64),
                       np.empty(0, np.int64), e.astype(np.float32))

    # Each token but a line's first holds exactly one colon, neither first nor last.
    is_first = np.zeros(T, bool)
    is_first[first_tok] = True
    nonfirst = np.flatnonzero(~is_first)
    cp = np.flatnonzero(buf == 58)
    if cp.size != nonfirst.size:
        return None
    ts_ext = np.append(ts, n)
    if not (np.all(cp > ts[nonfirst]) and np.all(cp < ts_ext[nonfirst + 1]) and np.all(buf[cp + 1] > 32)):
        return None
    # The second token is 'qid:<id>'.
    s = ts[first_tok + 1]
    if not np.all(cp[np.searchsorted(nonfirst, first_tok + 1)] == s + 3):
        return None
    if not (np.all(buf[s] == 113) and np.all(buf[s + 1] == 105) and np.all(buf[s + 2] == 100)):
        return None

    # Number strings start at every token start (except 'qid') and after every colon.
    b2 = buf.copy()
    b2[cp] = 32
    b2[s] = 32
    b2[s + 1] = 32
    b2[s + 2] = 32
    ns = np.full((T, 2), -1, np.int64)
    ns[:, 0] = ts
    ns[nonfirst, 1] = cp + 1
    ns[first_tok + 1, 0] = -1
    ns = ns.ravel()
    ns = ns[ns >= 0]
    offsets = np.empty(ns.size + 1, np.int32)
    offsets[:-1] = ns
    offsets[-1] = n
    arr = pa.StringArray.from_buffers(ns.size, pa.py_buffer(offsets), pa.py_buffer(b2))
    try:
        vals = pc.cast(pc.ascii_rtrim_whitespace(arr), pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None

    nums = 2 * ntok_nb - 2
    vo = np.zeros(R, np.int64)
    np.cumsum(nums[:-1], out=vo[1:])
    labels = vals[vo]
    qf = vals[vo + 1]
    if not (np.all(np.isfinite(labels)) and np.all(np.abs(qf) < 2**53) and np.all(qf == np.floor(qf))):
        return None
    head = np.zeros(vals.size, bool)
    head[vo] = True
    head[vo + 1] = True
    pairs = vals[~head].reshape(-1, 2)
    idxf = pairs[:, 0]
    idx = idxf.astype(np.int64)
    if not np.array_equal(idx, idxf) or (idx.size and idx.min() < 1):
        return None
    rows = np.repeat(np.arange(R, dtype=np.int64), ntok_nb - 2)
    return _Parsed(nonblank.astype(np.int64), labels, qf.astype(np.int64), rows, idx,
                   pairs[:, 1].astype(np.float32))


def _parse_slow(lines: Sequence[bytes], path, lineno0: int, num_features: Optional[int]) -> _Parsed:
    """Line-by-line reference parser; raises :class:`LetorFormatError`."""
    line_idx, labels, qids, rows, idxs, vals = [], [], [], [], [], []
    for i, raw in enumerate(lines):
        lineno = lineno0 + i
        body = raw.split(b"#", 1)[0]
        toks = body.split()
        if not toks:
            continue
        try:
            label = float(toks[0])
        except ValueError:
            label = float("nan")
        if not np.isfinite(label):
            raise LetorFormatError(path, lineno, f"bad label {toks[0].decode('utf-8', 'replace')!r}", raw)
        if len(toks) < 2 or not toks[1].startswith(b"qid:"):
            raise LetorFormatError(path, lineno, "missing qid (the second field must be 'qid:<id>')", raw)
        try:
            qid = int(toks[1][4:])
        except ValueError:
            raise LetorFormatError(
                path, lineno, f"bad qid {toks[1].decode('utf-8', 'replace')!r} (must be an integer)", raw
            ) from None
        r = len(labels)
        for tok in toks[2:]:
            parts = tok.split(b":")
            try:
                if len(parts) != 2:
                    raise ValueError
                fi = float(parts[0])
                v = float(parts[1])
                if fi != int(fi):
                    raise ValueError
                fi = int(fi)
            except (ValueError, OverflowError):
                raise LetorFormatError(
                    path, lineno, f"bad feature pair {tok.decode('utf-8', 'replace')!r} (want <index>:<value>)", raw
                ) from None
            if fi < 1 or (num_features is not None and fi > num_features):
                hi = num_features if num_features is not None else "num_features"
                raise LetorFormatError(path, lineno, f"feature index {fi} out of range 1..{hi}", raw)
            rows.append(r)
            idxs.append(fi)
            vals.append(v)
        line_idx.append(i)
        labels.append(label)
        qids.append(qid)
    return _Parsed(np.asarray(line_idx, np.int64), np.asarray(labels, np.float64), np.asarray(qids, np.int64),
                   np.asarray(rows, np.int64), np.asarray(idxs, np.int64), np.asarray(vals, np.float32))


def _parse_chunk(lines: Sequence[bytes], path, lineno0: int, num_features: Optional[int]) -> _Parsed:
    text = b"".join(lines)
    if b"#" in text:
        text = _COMMENT.sub(b"", text)
    if not text.endswith(b"\n"):
        text += b"\n"
    parsed = _parse_fast(text)
    if parsed is not None and num_features is not None and parsed.idx.size and parsed.idx.max() > num_features:
        parsed = None
    if parsed is None:
        parsed = _parse_slow(lines, path, lineno0, num_features)
    return parsed


def _iter_chunks(f, chunk_lines: int, chunk_bytes: int) -> Iterator[list]:
    first = True
    while True:
        lines = f.readlines(chunk_bytes)
        if not lines:
            return
        if first and lines[0].startswith(b"\xef\xbb\xbf"):
            lines[0] = lines[0][3:]
        first = False
        for i in range(0, len(lines), chunk_lines):
            yield lines[i:i + chunk_lines]


def parse_letor_lines(lines, *, num_features: Optional[int] = None, path="<lines>"):
    """Parse LETOR lines (str or bytes) held in memory.

    Returns ``(features [n, F] float32, labels [n] float32, qids [n] int64)``;
    ``F`` is ``num_features`` or the largest index seen.
    """
    blines = [l.encode() if isinstance(l, str) else l for l in lines]
    blines = [l if l.endswith(b"\n") else l + b"\n" for l in blines]
    p = _parse_chunk(blines, path, 1, num_features)
    F = num_features if num_features is not None else int(p.idx.max()) if p.idx.size else 0
    return p.dense(F), p.labels.astype(np.float32), p.qids


# --------------------------------------------------------------------------- .npy streaming


def _npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    text = repr(d).encode("latin1")
    pad = _HEADER_BYTES - 10 - len(text) - 1
    if pad < 0:
        raise ValueError("shape too large for the fixed .npy header")
    return b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"


class _NpyWriter:
    """Appends rows to a .npy file whose leading dimension is fixed up on close."""

    def __init__(self, path: pathlib.Path, dtype, row_shape: tuple):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), tuple(row_shape)
        self.n = 0
        self.f = open(path, "wb")
        self.f.write(_npy_header(self.dtype, (0,) + self.row_shape))

    def write(self, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, self.dtype)
        assert a.shape[1:] == self.row_shape
        self.f.write(a.tobytes())
        self.n += a.shape[0]

    def close(self) -> None:
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, (self.n,) + self.row_shape))
        self.f.close()


def _load(path: pathlib.Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- store


class QueryStore:
    """Documents grouped by query, backed by (memory-mapped) arrays.

    ``len(store)`` is the number of queries; ``store.query(i)`` returns
    ``(features [n_i, F] float32, labels [n_i] float32)``.  ``subset`` gives a
    view on some of the queries with the same interface.
    """

    def __init__(self, features, labels, qid_offsets, qids, *, index=None, directory=None, meta=None):
        self._features = features
        self._labels = labels
        self._offsets = np.asarray(qid_offsets, np.int64)
        self._qids = np.asarray(qids)
        self._index = None if index is None else np.asarray(index, np.int64)
        self.directory = None if directory is None else pathlib.Path(directory)
        self.meta = dict(meta or {})

    # -- constructors
    @classmethod
    def open(cls, directory) -> "QueryStore":
        """Open a store written by :func:`build_query_store` (arrays memory-mapped read-only)."""
        d = pathlib.Path(directory)
        missing = [n for n in ("features.npy", "labels.npy", "qid_offsets.npy", "qids.npy", "meta.json")
                   if not (d / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{d} is not a query store: missing {', '.join(missing)}")
        meta = json.loads((d / "meta.json").read_text())
        return cls(_load(d / "features.npy"), _load(d / "labels.npy"), np.load(d / "qid_offsets.npy"),
                   np.load(d / "qids.npy"), directory=d, meta=meta)

    @classmethod
    def from_arrays(cls, features, labels, qid_offsets, qids=None) -> "QueryStore":
        """An in-memory store; ``qid_offsets`` has ``Q + 1`` entries from 0 to ``n_docs``."""
        features = np.asarray(features, np.float32)
        labels = np.asarray(labels, np.float32)
        offsets = np.asarray(qid_offsets, np.int64)
        if features.ndim != 2:
            raise ValueError(f"features must be [n_docs, num_features], got shape {features.shape}")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels must have shape ({features.shape[0]},), got {labels.shape}")
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != features.shape[0] \
                or np.any(np.diff(offsets) < 0):
            raise ValueError("qid_offsets must be non-decreasing, start at 0 and end at n_docs")
        if qids is None:
            qids = np.arange(offsets.size - 1, dtype=np.int64)
        qids = np.asarray(qids)
        if qids.shape != (offsets.size - 1,):
            raise ValueError(f"qids must have one entry per query ({offsets.size - 1}), got {qids.shape}")
        return cls(features, labels, offsets, qids)

    # -- interface
    def _base(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"query index {i} out of range for {n} queries")
        i = int(i) % n
        return i if self._index is None else int(self._index[i])

    def __len__(self) -> int:
        return int(self._offsets.size - 1 if self._index is None else self._index.size)

    def query(self, i: int):
        j = self._base(i)
        a, b = int(self._offsets[j]), int(self._offsets[j + 1])
        return np.asarray(self._features[a:b]), np.asarray(self._labels[a:b])

    __getitem__ = query

    def __iter__(self):
        for i in range(len(self)):
            yield self.query(i)

    @property
    def num_features(self) -> int:
        return int(self._features.shape[1])

    @property
    def list_sizes(self) -> np.ndarray:
        sizes = np.diff(self._offsets)
        return sizes if self._index is None else sizes[self._index]

    @property
    def n_docs(self) -> int:
        return int(self.list_sizes.sum())

    @property
    def qids(self) -> np.ndarray:
        return self._qids if self._index is None else self._qids[self._index]

    def subset(self, indices) -> "QueryStore":
        """View on queries ``indices`` (positions in this store), in that order."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"subset indices out of range for {n} queries")
        idx = idx % max(n, 1)
        base = idx if self._index is None else self._index[idx]
        return QueryStore(self._features, self._labels, self._offsets, self._qids, index=base,
                          directory=self.directory, meta=self.meta)

    def arrays(self):
        """``(features [N, F], labels [N], qid_offsets [Q + 1])`` of this view as contiguous arrays."""
        sizes = self.list_sizes
        offsets = np.zeros(sizes.size + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        if self._index is None:
            return np.asarray(self._features), np.asarray(self._labels), offsets
        feats = np.empty((int(offsets[-1]), self.num_features), np.float32)
        labels = np.empty(int(offsets[-1]), np.float32)
        for k, j in enumerate(self._index):
            a, b = self._offsets[j], self._offsets[j + 1]
            feats[offsets[k]:offsets[k + 1]] = self._features[a:b]
            labels[offsets[k]:offsets[k + 1]] = self._labels[a:b]
        return feats, labels, offsets

    def __repr__(self) -> str:
        where = f", directory={str(self.directory)!r}" if self.directory else ""
        return f"QueryStore(queries={len(self)}, docs={self.n_docs}, num_features={self.num_features}{where})"


# --------------------------------------------------------------------------- conversion


def _check_file(path) -> pathlib.Path:
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"LETOR file not found: {p}" + (" (it is a folder)" if p.is_dir() else ""))
    return p


def _max_index(lines: Sequence[bytes], path, lineno0: int) -> int:
    """Largest feature index in ``lines``: the digits just before each colon."""
    text = b"".join(lines)
    if b"#" in text:
        text = _COMMENT.sub(b"", text)
    buf = np.frombuffer(text, np.uint8)
    cp = np.flatnonzero(buf == 58)
    if cp.size == 0:
        return 0
    value = np.zeros(cp.size, np.int64)
    alive = np.ones(cp.size, bool)
    mult = 1
    for k in range(1, 10):
        pos = cp - k
        c = buf[np.maximum(pos, 0)]
        digit = alive & (pos >= 0) & (c >= 48) & (c <= 57)
        value += np.where(digit, c.astype(np.int64) - 48, 0) * mult
        alive = digit
        mult *= 10
        if not alive.any():
            return int(value.max())
    p = _parse_chunk(lines, path, lineno0, None)  # absurdly long indices: let the parser judge
    return int(p.idx.max()) if p.idx.size else 0


def _scan_num_features(path: pathlib.Path, chunk_lines: int, chunk_bytes: int, bar) -> int:
    best = 0
    lineno = 1
    with open(path, "rb") as f:
        for lines in _iter_chunks(f, chunk_lines, chunk_bytes):
            best = max(best, _max_index(lines, path, lineno))
            lineno += len(lines)
            if bar is not None:
                bar.update(sum(map(len, lines)))
    return best


def build_query_store(path, out_dir, *, num_features: Optional[int] = None, chunk_lines: int = 65536,
                      chunk_bytes: int = 8 << 20, progress: bool = False) -> QueryStore:
    """Convert a LETOR text file into a memory-mapped store in ``out_dir``.

    Writes ``features.npy`` (float32 [N, F]), ``labels.npy`` (float32 [N]),
    ``qid_offsets.npy`` (int64 [Q + 1]), ``qids.npy`` (int64 [Q]) and
    ``meta.json``.  Chunks hold at most ``chunk_lines`` lines and about
    ``chunk_bytes`` bytes of text, which bounds memory use.  With
    ``num_features=None`` a first pass finds the largest feature index.
    """
    path = _check_file(path)
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be >= 1")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        passes = 1 if num_features is not None else 2
        bar = tqdm(total=st.st_size * passes, unit="B", unit_scale=True, desc=f"converting {path.name}")
    try:
        if num_features is None:
            num_features = _scan_num_features(path, chunk_lines, chunk_bytes, bar)
        F = int(num_features)
        if F < 0:
            raise ValueError("num_features must be >= 0")
        fw = _NpyWriter(out / "features.npy", np.float32, (F,))
        lw = _NpyWriter(out / "labels.npy", np.float32, ())
        offsets = [0]
        qids: list[int] = []
        seen: dict[int, int] = {}  # qid -> first line
        lineno = 1
        try:
            with open(path, "rb") as f:
                for lines in _iter_chunks(f, chunk_lines, chunk_bytes):
                    p = _parse_chunk(lines, path, lineno, F)
                    if p.n:
                        q = p.qids
                        run_starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
                        run_ends = np.r_[run_starts[1:], q.size]
                        for a, b in zip(run_starts.tolist(), run_ends.tolist()):
                            qid = int(q[a])
                            if qids and a == 0 and qids[-1] == qid:
                                offsets[-1] += b - a  # the previous chunk's query continues
                                continue
                            if qid in seen:
                                li = int(p.line_idx[a])
                                raise LetorFormatError(
                                    path, lineno + li,
                                    f"qid {qid} appears again after other queries (first seen at line "
                                    f"{seen[qid]}); LETOR files keep a query's documents on consecutive lines",
                                    lines[li])
                            seen[qid] = lineno + int(p.line_idx[a])
                            qids.append(qid)
                            offsets.append(offsets[-1] + b - a)
                        fw.write(p.dense(F))
                        lw.write(p.labels)
                    lineno += len(lines)
                    if bar is not None:
                        bar.update(sum(map(len, lines)))
        finally:
            fw.close()
            lw.close()
    finally:
        if bar is not None:
            bar.close()
    np.save(out / "qid_offsets.npy", np.asarray(offsets, np.int64))
    np.save(out / "qids.npy", np.asarray(qids, np.int64))
    meta = {
        "format": _FORMAT,
        "source": str(path.resolve()),
        "size": st.st_size,
        "mtime": st.st_mtime,
        "num_features": F,
        "n_docs": int(offsets[-1]),
        "n_queries": len(qids),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return QueryStore.open(out)


def open_letor(path, *, num_features: Optional[int] = None, chunk_lines: int = 65536,
               progress: bool = True) -> QueryStore:
    """Open a LETOR file as a :class:`QueryStore`, converting it on first use.

    The converted arrays live in ``cache_dir()/letor/<key>/`` where the key hashes
    the absolute path, size, mtime and ``num_features``; a changed file is
    converted again.
    """
    from .fetch import cache_dir

    p = _check_file(path).resolve()
    st = p.stat()
    key_src = f"{_FORMAT}|{p}|{st.st_size}|{st.st_mtime_ns}|{num_features}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    root = cache_dir() / "letor"
    final = root / key
    if (final / "meta.json").is_file():
        try:
            return QueryStore.open(final)
        except (OSError, ValueError):
            shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        build_query_store(p, tmp, num_features=num_features, chunk_lines=chunk_lines, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return QueryStore.open(final)
