"""LETOR / SVMlight-with-qid ranking files, converted once into memory-mapped stores.

Line format (MSLR-WEB10K/30K, LETOR 4.0 MQ2007/MQ2008, Istella, Yahoo LTR)::

    <label> qid:<id> <index>:<value> <index>:<value> ... [# comment]

Feature indices are 1-based; indices missing from a line are 0 (sparse files).
Blank lines and comment-only lines are skipped.  A query's documents must be on
consecutive lines.  Files compressed with gzip, bzip2 or xz are read as they
are; other compressed or binary files are refused with the path named.

:func:`build_query_store` converts a text file in one streaming pass (plus a
pre-pass to find the number of features when it is not given) into a folder of
``.npy`` arrays; peak memory is bounded by the chunk size, not the file size.
:func:`open_letor` does the same into the data cache and reuses the result.

Values are checked as they are read: a non-finite feature value, a label outside
the graded range ``0..max_label`` or a feature index above ``num_features`` stops
the conversion at ``path:line`` unless ``on_invalid`` says to ``"drop"`` such
lines or ``"impute"`` 0 for the bad values (the count is reported and kept in
``meta.json``).  When ``num_features`` is not given, a feature index far beyond
those of the other lines stops the conversion too, instead of widening every row.

Every store file's sha256 is recorded in ``meta.json`` when it is written and
checked when the store is opened; :func:`open_letor` converts a damaged cached
store again.

Parsing is vectorised per chunk: the line/token/colon structure is checked with
numpy on the raw bytes and the numbers are converted by Arrow's string-to-double
cast.  Any chunk the fast path does not accept is re-parsed line by line, which
either finds the exact offending line or handles the rare legal oddity.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import pathlib
import re
import shutil
import sys
import tempfile
import zlib
from typing import Iterator, Optional, Sequence

import numpy as np

from mlsd_jax.data.fetch import sha256_file

__all__ = [
    "ON_INVALID",
    "LetorFormatError",
    "QueryStore",
    "StoreIntegrityError",
    "build_query_store",
    "open_letor",
    "parse_letor_lines",
]

ON_INVALID = ("error", "drop", "impute")
"""Policies for well-formed lines with invalid values (see :func:`build_query_store`)."""

_EXPECTED = "'<label> qid:<id> <index>:<value> ...'"
_COMMENT = re.compile(rb"#[^\n]*")
_HEADER_BYTES = 128  # fixed .npy header size so the shape can be patched in place
_FORMAT = "mlsd_jax.letor/2"
_STORE_FILES = ("features.npy", "labels.npy", "qid_offsets.npy", "qids.npy")
_MAX_INDEX = 2**31 - 1
# A feature index is "far beyond the others" when it exceeds _FAR_RATIO times the
# _FAR_QUANTILE quantile of the per-line largest indices, and _FAR_FLOOR.
_FAR_RATIO = 4
_FAR_QUANTILE = 0.999
_FAR_FLOOR = 1000
_SNIFF_BYTES = 1 << 16
# (magic bytes, name, opener or None when not read directly)
_COMPRESSED = (
    (b"\x1f\x8b", "gzip", gzip.open),
    (b"BZh", "bzip2", bz2.open),
    (b"\xfd7zXZ\x00", "xz", lzma.open),
    (b"PK\x03\x04", "zip", None),
    (b"(\xb5/\xfd", "zstd", None),
    (b"7z\xbc\xaf\x27\x1c", "7z", None),
)
_DECOMPRESS_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def _log(msg: str) -> None:
    print(f"[mlsd_jax.letor] {msg}", file=sys.stderr, flush=True)


def _printable(text: str) -> str:
    """``text`` with control and other non-printable characters escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class LetorFormatError(ValueError):
    """A LETOR file that cannot be read as it is; the message names ``path:line``.

    ``lineno`` is the 1-based line of the problem (1 for problems of the whole
    file, such as a compressed or binary file).  Malformed lines read
    ``path:line: what; expected '<label> qid:<id> ...', got '<line>'``; lines
    whose values are invalid read ``path:line: what; how to proceed``.
    """

    def __init__(self, path, lineno: int, what: str, line=None, *, hint: Optional[str] = None,
                 whole_file: bool = False):
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        line = "" if line is None else line.rstrip("\r\n")
        self.path = str(path)
        self.lineno = int(lineno)
        self.what = what
        self.line = line
        self.hint = hint
        self.whole_file = whole_file
        where = f"{path}" if whole_file else f"{path}:{lineno}"
        if hint is None:
            msg = f"{where}: {what}; expected {_EXPECTED}, got '{_printable(line[:80])}'"
        else:
            msg = f"{where}: {what}; {hint}"
        super().__init__(msg)

    def __reduce__(self):  # picklable across worker processes
        return _rebuild_letor_error, (type(self), self.path, self.lineno, self.what, self.line, self.hint,
                                      self.whole_file)


def _rebuild_letor_error(cls, path, lineno, what, line, hint, whole_file):
    return cls(path, lineno, what, line, hint=hint, whole_file=whole_file)


class StoreIntegrityError(ValueError):
    """A store file differs from what was recorded when the store was written.

    ``file`` is the damaged file and ``directory`` the store folder.
    """

    def __init__(self, directory, file, problem: str):
        self.directory = pathlib.Path(directory)
        self.file = pathlib.Path(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}; delete {self.directory} and convert the LETOR file again")

    def __reduce__(self):
        return type(self), (self.directory, self.file, self.problem)


def _check_on_invalid(on_invalid: str, max_label) -> None:
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {', '.join(map(repr, ON_INVALID))}, got {on_invalid!r}")
    if max_label is not None and not (np.isfinite(max_label) and max_label >= 0):
        raise ValueError(f"max_label must be a number >= 0 or None, got {max_label!r}")


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

    def line_max(self) -> np.ndarray:
        """Largest feature index of each row (0 for rows without features)."""
        out = np.zeros(self.n, np.int64)
        if self.idx.size:
            np.maximum.at(out, self.rows, self.idx)
        return out

    def take_rows(self, keep: np.ndarray) -> "_Parsed":
        """The rows where ``keep`` is true (and their pairs)."""
        new_id = np.cumsum(keep) - 1
        pk = keep[self.rows]
        return _Parsed(self.line_idx[keep], self.labels[keep], self.qids[keep], new_id[self.rows[pk]],
                       self.idx[pk], self.vals[pk])


def _empty_parsed() -> _Parsed:
    i = np.empty(0, np.int64)
    return _Parsed(i, np.empty(0, np.float64), i, i, i, np.empty(0, np.float32))


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
        return _empty_parsed()

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
    labels = vals[vo]  # non-finite labels are left to the value checks
    qf = vals[vo + 1]
    if not (np.all(np.abs(qf) < 2**53) and np.all(qf == np.floor(qf))):
        return None
    head = np.zeros(vals.size, bool)
    head[vo] = True
    head[vo + 1] = True
    pairs = vals[~head].reshape(-1, 2)
    idxf = pairs[:, 0]
    if idxf.size and not (np.all(idxf >= 1) and np.all(idxf <= _MAX_INDEX)):
        return None  # also rejects nan
    idx = idxf.astype(np.int64)
    if not np.array_equal(idx, idxf):
        return None
    rows = np.repeat(np.arange(R, dtype=np.int64), ntok_nb - 2)
    with np.errstate(over="ignore"):
        fvals = pairs[:, 1].astype(np.float32)
    return _Parsed(nonblank.astype(np.int64), labels, qf.astype(np.int64), rows, idx, fvals)


def _parse_slow(lines: Sequence[bytes], path, lineno0: int) -> _Parsed:
    """Line-by-line reference parser; raises :class:`LetorFormatError` on malformed lines.

    Values are not judged here (non-finite numbers, label range, index above
    ``num_features``): :func:`_screen` does that for both parsers.
    """
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
            raise LetorFormatError(path, lineno, f"bad label {toks[0].decode('utf-8', 'replace')!r}",
                                   raw) from None
        if len(toks) < 2 or not toks[1].startswith(b"qid:"):
            raise LetorFormatError(path, lineno, "missing qid (the second field must be 'qid:<id>')", raw)
        try:
            qid = int(toks[1][4:])
            if not -2**63 <= qid < 2**63:
                raise ValueError
        except ValueError:
            raise LetorFormatError(
                path, lineno, f"bad qid {toks[1].decode('utf-8', 'replace')!r} (must be a 64-bit integer)", raw
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
            if fi < 1:
                raise LetorFormatError(path, lineno, f"feature index {fi} out of range (indices start at 1)", raw)
            if fi > _MAX_INDEX:
                raise LetorFormatError(path, lineno, f"feature index {fi} out of range (at most {_MAX_INDEX})", raw)
            rows.append(r)
            idxs.append(fi)
            vals.append(v)
        line_idx.append(i)
        labels.append(label)
        qids.append(qid)
    with np.errstate(over="ignore"):
        fvals = np.asarray(vals, np.float64).astype(np.float32)
    return _Parsed(np.asarray(line_idx, np.int64), np.asarray(labels, np.float64), np.asarray(qids, np.int64),
                   np.asarray(rows, np.int64), np.asarray(idxs, np.int64), fvals)


def _not_text(path, lineno: int, why: str) -> LetorFormatError:
    return LetorFormatError(path, lineno, f"not a text LETOR file ({why})",
                            hint=f"LETOR data is plain text lines {_EXPECTED}")


def _check_text(raw: bytes, stripped: bytes, path, lineno0: int) -> None:
    """Refuse NUL bytes and (outside comments) bytes that are not UTF-8, without echoing them."""
    pos = raw.find(b"\x00")
    if pos >= 0:
        raise _not_text(path, lineno0 + raw.count(b"\n", 0, pos), "it holds NUL bytes: is it a binary file?")
    if not stripped.isascii():
        try:
            stripped.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_text(path, lineno0 + stripped.count(b"\n", 0, e.start),
                            "bytes that are not UTF-8") from None


def _parse_chunk(lines: Sequence[bytes], path, lineno0: int) -> _Parsed:
    raw = b"".join(lines)
    text = _COMMENT.sub(b"", raw) if b"#" in raw else raw
    _check_text(raw, text, path, lineno0)
    if not text.endswith(b"\n"):
        text += b"\n"
    parsed = _parse_fast(text)
    if parsed is None:
        parsed = _parse_slow(lines, path, lineno0)
    return parsed


def _fmt(v) -> str:
    v = float(v)
    if not np.isfinite(v):
        return str(v)
    return str(int(v)) if v == int(v) else repr(v)


_INVALID_HINT = ("fix the file, or set on_invalid='drop' (data.on_invalid=drop) to skip such lines "
                 "or on_invalid='impute' to read the bad values as 0")


class _Tally:
    """Lines with invalid values met so far, by kind."""

    KINDS = ("nonfinite_feature", "label_out_of_range", "index_above_num_features")

    def __init__(self):
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.lines = 0

    def as_dict(self, on_invalid: str) -> dict:
        return {"on_invalid": on_invalid, "lines": self.lines, **self.counts}


def _describe_invalid(info: dict, max_label) -> str:
    names = {"nonfinite_feature": "non-finite feature values",
             "label_out_of_range": f"labels outside 0..{_fmt(max_label) if max_label is not None else 'inf'}",
             "index_above_num_features": "feature indices above num_features"}
    parts = [f"{info[k]} with {names[k]}" for k in _Tally.KINDS if info.get(k)]
    verb = "dropped" if info["on_invalid"] == "drop" else "imputed 0 in"
    return f"{verb} {info['lines']} lines with invalid values ({', '.join(parts)}; on_invalid={info['on_invalid']})"


def _screen(p: _Parsed, F: Optional[int], on_invalid: str, max_label, path, lineno0: int,
            lines: Sequence[bytes], tally: Optional[_Tally]):
    """Apply the value checks to a parsed chunk.

    Returns ``(parsed, keep)``: the rows to store and, when rows were dropped, the
    boolean mask of kept rows over ``p``'s rows (else ``None``).
    """
    if p.n == 0:
        return p, None
    lab = p.labels
    bad_label = ~np.isfinite(lab) | (lab < 0)
    if max_label is not None:
        bad_label |= lab > max_label
    bad_val = ~np.isfinite(p.vals)
    bad_idx = p.idx > F if F is not None else np.zeros(p.idx.size, bool)
    if not (bad_label.any() or bad_val.any() or bad_idx.any()):
        return p, None
    row_val = np.zeros(p.n, bool)
    row_val[p.rows[bad_val]] = True
    row_idx = np.zeros(p.n, bool)
    row_idx[p.rows[bad_idx]] = True
    bad_row = bad_label | row_val | row_idx
    if on_invalid == "error":
        r = int(np.flatnonzero(bad_row)[0])
        li = int(p.line_idx[r])
        lineno = lineno0 + li
        if row_idx[r]:
            k = int(np.flatnonzero(bad_idx & (p.rows == r))[0])
            raise LetorFormatError(
                path, lineno,
                f"feature index {int(p.idx[k])} out of range 1..{F} (num_features={F}: set data.num_features "
                f"to the real width, or data.on_invalid=drop to skip such lines)", lines[li])
        if bad_label[r]:
            rng = f"0..{_fmt(max_label)}" if max_label is not None else "0 and above"
            raise LetorFormatError(
                path, lineno,
                f"label {_fmt(lab[r])} is not a graded relevance in {rng} (max_label="
                f"{_fmt(max_label) if max_label is not None else None}, data.max_label)", hint=_INVALID_HINT)
        k = int(np.flatnonzero(bad_val & (p.rows == r))[0])
        raise LetorFormatError(path, lineno, f"feature {int(p.idx[k])} is {_fmt(p.vals[k])}", hint=_INVALID_HINT)
    if tally is not None:
        tally.lines += int(bad_row.sum())
        tally.counts["nonfinite_feature"] += int(row_val.sum())
        tally.counts["label_out_of_range"] += int(bad_label.sum())
        tally.counts["index_above_num_features"] += int(row_idx.sum())
    if on_invalid == "drop":
        keep = ~bad_row
        return p.take_rows(keep), keep
    labels = np.where(bad_label, 0.0, lab)
    vals = np.where(bad_val, np.float32(0), p.vals)
    ok = ~bad_idx
    return _Parsed(p.line_idx, labels, p.qids, p.rows[ok], p.idx[ok], vals[ok]), None


def _far_index_check(hist: dict, top_line: int, path) -> None:
    """Stop when the largest feature index is far beyond the per-line maxima of the others."""
    if not hist:
        return
    vals = np.asarray(sorted(hist), np.int64)
    counts = np.asarray([hist[v] for v in vals.tolist()], np.int64)
    n, m = int(counts.sum()), int(vals[-1])
    if n < 2 or m <= _FAR_FLOOR:
        return
    k = int(np.floor(_FAR_QUANTILE * (n - 1)))
    q = int(vals[np.searchsorted(np.cumsum(counts), k, side="right")])
    limit = _FAR_RATIO * q
    if m <= limit:
        return
    normal = int(vals[vals <= limit].max())
    beyond = int(counts[vals > limit].sum())
    more = f"; {beyond} lines go beyond {limit}" if beyond > 1 else ""
    raise LetorFormatError(
        path, top_line, f"feature index {m} is far beyond the others (max {normal} elsewhere{more})",
        hint=f"set data.num_features={m} if the file really has that many features, or "
             f"data.num_features={normal} with data.on_invalid=drop to skip such lines")


def _line_maxima(lines: Sequence[bytes], path, lineno0: int) -> np.ndarray:
    """Largest feature index on each line (0 where none): the digits just before each colon."""
    raw = b"".join(lines)
    text = _COMMENT.sub(b"", raw) if b"#" in raw else raw
    _check_text(raw, text, path, lineno0)
    out = np.zeros(len(lines), np.int64)
    buf = np.frombuffer(text, np.uint8)
    cp = np.flatnonzero(buf == 58)
    if cp.size == 0:
        return out
    value = np.zeros(cp.size, np.int64)
    ndig = np.zeros(cp.size, np.int64)
    alive = np.ones(cp.size, bool)
    mult = 1
    for k in range(1, 11):
        pos = cp - k
        c = buf[np.maximum(pos, 0)]
        digit = alive & (pos >= 0) & (c >= 48) & (c <= 57)
        if k == 10:
            alive = digit
            break
        value += np.where(digit, c.astype(np.int64) - 48, 0) * mult
        ndig += digit
        alive = digit
        mult *= 10
        if not alive.any():
            break
    before = cp - ndig - 1
    c = buf[np.maximum(before, 0)]
    plain = (ndig == 0) | (before < 0) | (c <= 32)
    if alive.any() or not plain.all():
        # indices of 10+ digits or written like '1e3:' / '2.0:': let the parser judge
        p = _parse_chunk(lines, path, lineno0)
        out[p.line_idx] = p.line_max()
        return out
    line_of = np.searchsorted(np.flatnonzero(buf == 10), cp)
    starts = np.flatnonzero(np.r_[True, line_of[1:] != line_of[:-1]])
    out[line_of[starts]] = np.maximum.reduceat(value, starts)
    return out


def parse_letor_lines(lines, *, num_features: Optional[int] = None, path="<lines>", on_invalid: str = "error",
                      max_label: Optional[float] = 4):
    """Parse LETOR lines (str or bytes) held in memory.

    Returns ``(features [n, F] float32, labels [n] float32, qids [n] int64)``;
    ``F`` is ``num_features`` or the largest index seen.  ``on_invalid`` and
    ``max_label`` are as for :func:`build_query_store`.
    """
    _check_on_invalid(on_invalid, max_label)
    blines = [l.encode() if isinstance(l, str) else bytes(l) for l in lines]
    text = b"".join(l if l.endswith(b"\n") else l + b"\n" for l in blines)
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    blines = [l + b"\n" for l in text.split(b"\n")[:-1]]  # numbered as the lines of a file
    p = _parse_chunk(blines, path, 1)
    F = num_features
    if F is None:
        lm = p.line_max()
        vals, counts = np.unique(lm[lm > 0], return_counts=True)
        if vals.size:
            _far_index_check(dict(zip(vals.tolist(), counts.tolist())),
                             1 + int(p.line_idx[int(np.argmax(lm))]), path)
        F = int(lm.max()) if lm.size else 0
    p, _ = _screen(p, F, on_invalid, max_label, path, 1, blines, None)
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
        if self.f.closed:
            return
        self.f.seek(0)
        self.f.write(_npy_header(self.dtype, (self.n,) + self.row_shape))
        self.f.close()


def _load(path: pathlib.Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _verify_store(d: pathlib.Path, meta: dict) -> None:
    """Check every array file against the size and sha256 recorded in ``meta.json``."""
    files = meta.get("files")
    if not isinstance(files, dict):
        raise StoreIntegrityError(d, d / "meta.json", "records no checksums (written by an older version)")
    for name in _STORE_FILES:
        rec = files.get(name)
        p = d / name
        if not isinstance(rec, dict) or "sha256" not in rec:
            raise StoreIntegrityError(d, p, "has no recorded checksum")
        size = p.stat().st_size
        if size != rec.get("size"):
            raise StoreIntegrityError(d, p, f"is {size} bytes, {rec.get('size')} were written (truncated or edited)")
        if sha256_file(p) != rec["sha256"]:
            raise StoreIntegrityError(d, p, "does not match the sha256 recorded when the store was written "
                                            "(edited or damaged)")


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
    def open(cls, directory, *, verify: bool = True) -> "QueryStore":
        """Open a store written by :func:`build_query_store` (arrays memory-mapped read-only).

        With ``verify`` (the default) every array file is first checked against
        the size and sha256 recorded in ``meta.json`` when it was written; a
        difference raises :class:`StoreIntegrityError` naming the file.
        """
        d = pathlib.Path(directory)
        missing = [n for n in _STORE_FILES + ("meta.json",) if not (d / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{d} is not a query store: missing {', '.join(missing)}")
        try:
            meta = json.loads((d / "meta.json").read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise StoreIntegrityError(d, d / "meta.json", f"is not valid store metadata ({e})") from None
        if verify:
            _verify_store(d, meta)
        store = cls(_load(d / "features.npy"), _load(d / "labels.npy"), np.load(d / "qid_offsets.npy"),
                    np.load(d / "qids.npy"), directory=d, meta=meta)
        n_docs = meta.get("n_docs", store._features.shape[0])
        if not (store._features.shape[0] == store._labels.shape[0] == n_docs == store._offsets[-1]
                and store._qids.size == store._offsets.size - 1 == meta.get("n_queries", store._qids.size)):
            raise StoreIntegrityError(d, d / "meta.json", "array shapes disagree with each other or with the "
                                                          "recorded document and query counts")
        return store

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

    def query_max_labels(self) -> np.ndarray:
        """Largest label of each query of this view (``-inf`` for a query without documents)."""
        sizes = np.diff(self._offsets)
        out = np.full(sizes.size, -np.inf, np.float32)
        nonempty = sizes > 0
        if nonempty.any():
            out[nonempty] = np.maximum.reduceat(np.asarray(self._labels), self._offsets[:-1][nonempty])
        return out if self._index is None else out[self._index]

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


def _sniff(path: pathlib.Path) -> Optional[str]:
    """The compression of ``path`` that is read directly (``"gzip"``, ...) or ``None`` for plain text.

    Raises :class:`LetorFormatError` for other compressed files, archives and
    binary files (never echoing their bytes).
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    compression = None
    for magic, name, opener in _COMPRESSED:
        if head.startswith(magic) and (name != "bzip2" or head[3:4].isdigit()):
            if opener is None:
                raise LetorFormatError(path, 1, f"compressed file ({name})",
                                       hint="decompress it first (gzip, bzip2 and xz files are read as they are)",
                                       whole_file=True)
            compression = name
            try:
                with opener(path, "rb") as z:
                    head = z.read(_SNIFF_BYTES)
            except _DECOMPRESS_ERRORS as e:
                raise LetorFormatError(path, 1, f"damaged {name} file ({e})",
                                       hint="download or decompress it again", whole_file=True) from None
            break
    if head[257:262] == b"ustar":
        what = f"a tar archive{' compressed with ' + compression if compression else ''}"
        raise LetorFormatError(path, 1, f"not a text LETOR file ({what})",
                               hint="extract the LETOR text files from it first", whole_file=True)
    full = len(head) < _SNIFF_BYTES
    cut = head if full else head[:head.rfind(b"\n") + 1]
    _check_text(cut, _COMMENT.sub(b"", cut) if b"#" in cut else cut, path, 1)
    return compression


def _open_data(path: pathlib.Path, compression: Optional[str]):
    if compression is None:
        return open(path, "rb")
    return {name: opener for _, name, opener in _COMPRESSED}[compression](path, "rb")


def _iter_chunks(f, chunk_lines: int, chunk_bytes: int, path=None) -> Iterator[list]:
    first = True
    lineno = 1
    while True:
        try:
            lines = f.readlines(chunk_bytes)
        except _DECOMPRESS_ERRORS as e:
            raise LetorFormatError(path, lineno, f"compressed data is damaged or truncated ({e})",
                                   hint="download or decompress the file again") from None
        if not lines:
            return
        if first and lines[0].startswith(b"\xef\xbb\xbf"):
            lines[0] = lines[0][3:]
        first = False
        for i in range(0, len(lines), chunk_lines):
            yield lines[i:i + chunk_lines]
        lineno += len(lines)


def _scan_num_features(path: pathlib.Path, compression, chunk_lines: int, chunk_bytes: int, bar) -> int:
    """Largest feature index of the file; stops when it is far beyond those of the other lines."""
    hist: dict[int, int] = {}
    best, best_line = 0, 1
    lineno = 1
    with _open_data(path, compression) as f:
        for lines in _iter_chunks(f, chunk_lines, chunk_bytes, path):
            lm = _line_maxima(lines, path, lineno)
            i = int(np.argmax(lm)) if lm.size else 0
            if lm.size and lm[i] > best:
                best, best_line = int(lm[i]), lineno + i
            vals, counts = np.unique(lm[lm > 0], return_counts=True)
            for v, c in zip(vals.tolist(), counts.tolist()):
                hist[v] = hist.get(v, 0) + c
            lineno += len(lines)
            if bar is not None:
                bar.update(sum(map(len, lines)))
    _far_index_check(hist, best_line, path)
    return best


def build_query_store(path, out_dir, *, num_features: Optional[int] = None, chunk_lines: int = 65536,
                      chunk_bytes: int = 8 << 20, progress: bool = False, on_invalid: str = "error",
                      max_label: Optional[float] = 4) -> QueryStore:
    """Convert a LETOR text file (plain, or gzip/bzip2/xz) into a memory-mapped store in ``out_dir``.

    Writes ``features.npy`` (float32 [N, F]), ``labels.npy`` (float32 [N]),
    ``qid_offsets.npy`` (int64 [Q + 1]), ``qids.npy`` (int64 [Q]) and
    ``meta.json`` (counts, the options, and each array file's size and sha256).
    Chunks hold at most ``chunk_lines`` lines and about ``chunk_bytes`` bytes of
    text, which bounds memory use.  With ``num_features=None`` a first pass finds
    the largest feature index, and stops with :class:`LetorFormatError` when it
    is far beyond the other lines' (more than 4x the 99.9th percentile of the
    per-line maxima, and above 1000): one bad line would otherwise widen every row.

    Lines with invalid values (a non-finite feature value, a label outside
    ``0..max_label`` (graded relevance; ``max_label=None`` accepts any finite
    label >= 0), a feature index above ``num_features``) are handled by
    ``on_invalid``: ``"error"`` (default) stops at the first with
    ``path:line``; ``"drop"`` skips those lines; ``"impute"`` reads the bad
    values as 0 (bad labels become 0, indices above ``num_features`` are
    ignored).  The number of affected lines is logged and kept in ``meta.json``
    under ``"invalid"``.
    """
    path = _check_file(path)
    _check_on_invalid(on_invalid, max_label)
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be >= 1")
    compression = _sniff(path)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        passes = 1 if num_features is not None else 2
        total = st.st_size * passes if compression is None else None
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"converting {path.name}")
    tally = _Tally()
    try:
        if num_features is None:
            num_features = _scan_num_features(path, compression, chunk_lines, chunk_bytes, bar)
        F = int(num_features)
        if F < 0:
            raise ValueError("num_features must be >= 0")
        fw = _NpyWriter(out / "features.npy", np.float32, (F,))
        lw = _NpyWriter(out / "labels.npy", np.float32, ())
        offsets = [0]
        qids: list[int] = []
        seen: dict[int, int] = {}  # qid -> first line
        cur_qid, cur_stored = None, False  # the query of the last line read; any of its lines stored?
        lineno = 1
        try:
            with _open_data(path, compression) as f:
                for lines in _iter_chunks(f, chunk_lines, chunk_bytes, path):
                    p_all = _parse_chunk(lines, path, lineno)
                    p, keep = _screen(p_all, F, on_invalid, max_label, path, lineno, lines, tally)
                    if p_all.n:
                        q = p_all.qids
                        run_starts = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
                        run_ends = np.r_[run_starts[1:], q.size]
                        kept_before = None if keep is None else np.r_[0, np.cumsum(keep)]
                        for a, b in zip(run_starts.tolist(), run_ends.tolist()):
                            qid = int(q[a])
                            if not (a == 0 and cur_qid == qid):  # else the previous chunk's query continues
                                if qid in seen:
                                    li = int(p_all.line_idx[a])
                                    raise LetorFormatError(
                                        path, lineno + li,
                                        f"qid {qid} appears again after other queries (first seen at line "
                                        f"{seen[qid]}); LETOR files keep a query's documents on consecutive lines",
                                        lines[li])
                                seen[qid] = lineno + int(p_all.line_idx[a])
                                cur_qid, cur_stored = qid, False
                            kept = b - a if kept_before is None else int(kept_before[b] - kept_before[a])
                            if not kept:
                                continue
                            if cur_stored:
                                offsets[-1] += kept
                            else:
                                qids.append(qid)
                                offsets.append(offsets[-1] + kept)
                                cur_stored = True
                    if p.n:
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
        "compression": compression,
        "num_features": F,
        "n_docs": int(offsets[-1]),
        "n_queries": len(qids),
        "max_label": max_label,
        "invalid": tally.as_dict(on_invalid),
        "files": {name: {"size": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
                  for name in _STORE_FILES},
    }
    tmp_meta = out / f".meta.json.tmp-{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, out / "meta.json")
    if tally.lines:
        _log(f"{path}: {_describe_invalid(meta['invalid'], max_label)}")
    return QueryStore.open(out, verify=False)


def _remove_store(final: pathlib.Path) -> None:
    try:
        shutil.rmtree(final)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StoreIntegrityError(final, final, f"is damaged and could not be removed ({e})") from None


def open_letor(path, *, num_features: Optional[int] = None, chunk_lines: int = 65536, progress: bool = True,
               on_invalid: str = "error", max_label: Optional[float] = 4) -> QueryStore:
    """Open a LETOR file as a :class:`QueryStore`, converting it on first use.

    The converted arrays live in ``cache_dir()/letor/<key>/`` where the key hashes
    the absolute path, size, mtime, ``num_features``, ``on_invalid`` and
    ``max_label``; a changed file is converted again.  A cached store whose files
    no longer match their recorded sha256 is converted again (saying so on
    stderr).  ``on_invalid`` and ``max_label`` are as for
    :func:`build_query_store`; lines dropped or imputed are reported each time.
    """
    from .fetch import cache_dir

    _check_on_invalid(on_invalid, max_label)
    p = _check_file(path).resolve()
    st = p.stat()
    key_src = f"{_FORMAT}|{p}|{st.st_size}|{st.st_mtime_ns}|{num_features}|{on_invalid}|{max_label}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    root = cache_dir() / "letor"
    final = root / key
    if (final / "meta.json").is_file():
        try:
            store = QueryStore.open(final)
        except StoreIntegrityError as e:
            _log(f"converted cache of {p} is damaged: {e.file.name} {e.problem}; converting it again")
            _remove_store(final)
        except (OSError, ValueError) as e:
            _log(f"converted cache of {p} could not be read ({e}); converting it again")
            _remove_store(final)
        else:
            info = store.meta.get("invalid") or {}
            if info.get("lines"):
                _log(f"{p}: {_describe_invalid(info, max_label)}")
            return store
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        build_query_store(p, tmp, num_features=num_features, chunk_lines=chunk_lines, progress=progress,
                          on_invalid=on_invalid, max_label=max_label)
        try:
            os.rename(tmp, final)
            renamed = True  # the files were hashed as they were written
        except OSError:
            if not (final / "meta.json").is_file():
                raise
            renamed = False  # another process converted it first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return QueryStore.open(final, verify=not renamed)
