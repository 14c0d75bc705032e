"""Batch scoring with an exported model: Parquet, CSV or LETOR in, Parquet out, locally or on Spark.

Both engines run one scoring path over Arrow tables, :class:`Scorer`: the bundle's host encoder
(:meth:`mlsd_jax.export.Bundle.encode`) and its jitted JAX predict, the feature path of the model
server and the SavedModel. Every call has the same shape (the last batch is padded), so the
function compiles once, and a row's score does not depend on which other rows share its batch:
the local run and the Spark run write the same numbers.

Two input layouts follow from the model's signature:

* **rows** (tabular, CTR): every input is ``[batch]`` (or ``[batch, k]``, read from a list
  column); each input is read from the column of that name, or of the training column it was
  named after (``marital-status`` feeds ``marital_status``). One output row per input row.
* **lists** (ranking): inputs ``[batch, list, ...]`` plus a boolean ``[batch, list]`` mask. Rows
  are documents, grouped into lists by a query column (``qid``; LETOR files carry it); each list
  is padded to a power-of-two length bucket, so a list is always scored at the same shape. One
  output row per document: the query, the document's position ``doc`` within its query and its
  scores.

Locally the input is streamed in bounded memory (a reader thread decodes and encodes ahead while
the jitted function uses all cores) into a Parquet file with row groups, written to a temporary
name and renamed when complete. On Spark the same functions run inside ``mapInPandas`` on the
executors (the bundle is broadcast, so executors need the package but not the model path), and
Spark writes a Parquet folder.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from mlsd_jax.errors import ConfigError, UserError
from mlsd_jax.tasks.base import serving_name

FORMATS = ("parquet", "csv", "letor")
ENGINES = ("local", "spark")
DOC = "doc"          # output column: a document's position within its query (lists layout)
_LINE = "_line"      # Spark: input order, used to keep documents in file order within a query
# CSV cells read as missing numbers (pyarrow's default null markers, which training also used).
_CSV_NULLS = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                        "nan", "null"])


class BatchInputError(UserError):
    """Input that cannot be scored as it is: the message names the file, column and expectation."""


@dataclasses.dataclass
class BatchPredictConfig:
    """The ``configs/batch_predict.yaml`` settings (see that file for their meaning)."""

    model: str = "???"
    input: str = "???"
    output: str = "???"
    format: str | None = None
    engine: str = "local"
    signature: str = "serving_default"
    batch_size: int = 4096
    keep: list[str] = dataclasses.field(default_factory=list)
    group: str = "qid"
    min_list: int = 8
    row_group_size: int = 65536
    workers: int | None = None
    overwrite: bool = False
    progress: bool = True
    spark: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"master": "local[*]", "app_name": "mlsd_jax-batch-predict",
                                 "conf": {}})


# ------------------------------------------------------------------------------- the model
def resolve_model(path: str | os.PathLike) -> pathlib.Path:
    """An export version folder, or a base folder of numbered versions (the latest is used)."""
    from mlsd_jax.export.bundle import CARD

    p = pathlib.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model={str(p)!r} does not exist")
    if (p / CARD).exists() or (p / "assets.extra" / CARD).exists():
        return p
    versions = sorted((int(c.name), c) for c in p.iterdir() if c.is_dir() and c.name.isdigit()
                      and (c / "assets.extra" / CARD).exists())
    if not versions:
        raise FileNotFoundError(f"model={str(p)!r}: not an export version (no assets.extra/{CARD}) "
                                f"and no numbered version folders with one inside")
    return versions[-1][1]


def _arrow_type(dtype) -> pa.DataType:
    dtype = np.dtype(dtype)
    return pa.string() if dtype.kind in "USO" else pa.from_numpy_dtype(dtype)


def _is_string(dtype) -> bool:
    return np.dtype(dtype).kind in "USO"


class Scorer:
    """Scores Arrow tables with one signature of a bundle, in fixed-shape jitted calls.

    Args:
      bundle: a loaded :class:`mlsd_jax.export.Bundle`.
      signature: the signature to run.
      batch_size: rows per call (rows layout) or padded documents per call (lists layout).
      group: the query column that groups documents into lists (lists layout).
      min_list: the smallest list-length bucket (lists layout).
    """

    def __init__(self, bundle, signature: str = "serving_default", *, batch_size: int = 4096,
                 group: str = "qid", min_list: int = 8):
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: expected a positive number of rows")
        if min_list < 1:
            raise ConfigError(f"min_list={min_list}: expected a positive list length")
        if signature not in bundle.signatures:
            raise ConfigError(f"signature={signature!r}: the model has signatures "
                              f"{sorted(bundle.signatures)}")
        self.bundle, self.signature = bundle, signature
        self.batch_size, self.group, self.min_list = int(batch_size), group, int(min_list)
        sig = self.sig = bundle.signatures[signature]
        self.fn = bundle.jax_predict(signature)
        self.layout, self.inputs, self.mask = self._layout(dict(sig.inputs))
        self.outputs = self._output_specs()

    # ------------------------------------------------------------------ signature analysis
    def _layout(self, inputs: dict) -> tuple[str, dict, str | None]:
        def fixed(dims):
            return all(isinstance(d, int) for d in dims)

        if all(d and d[0] == "batch" and fixed(d[1:]) for d, _ in inputs.values()):
            return "rows", inputs, None
        masks = [k for k, (d, t) in inputs.items()
                 if tuple(d) == ("batch", "list") and np.dtype(t) == np.bool_]
        docs = {k: v for k, v in inputs.items() if k not in masks[:1]}
        if len(masks) >= 1 and docs and all(tuple(d[:2]) == ("batch", "list") and fixed(d[2:])
                                            for d, _ in docs.values()):
            return "lists", docs, masks[0]
        shapes = {k: list(d) for k, (d, _) in inputs.items()}
        raise BatchInputError(
            f"signature {self.signature!r} has inputs {shapes}; batch scoring reads either rows "
            f"(every input [batch] or [batch, k]) or ranking lists (inputs [batch, list, ...] "
            f"plus a bool [batch, list] mask)")

    def _output_specs(self) -> dict[str, tuple[np.dtype, tuple[int, ...], bool]]:
        """``output -> (dtype, trailing dims, per document)`` from an abstract call."""
        import jax

        def specs(batch, length):
            out = {}
            for k, (dims, dt) in self.sig.model_inputs.items():
                shape = [d if isinstance(d, int) else {"batch": batch, "list": length}.get(d, 1)
                         for d in dims]
                out[k] = jax.ShapeDtypeStruct(tuple(shape), np.dtype(dt))
            return out

        shapes = dict(jax.eval_shape(self.fn, self.bundle.variables, self.bundle.consts,
                                     specs(2, 3)))
        for name, (source, _) in self.sig.lookups.items():  # names of ids: same shape, strings
            shapes[name] = jax.ShapeDtypeStruct(shapes[source].shape, np.dtype(object))
        a = {k: shapes[k] for k in self.sig.outputs}
        if self.layout == "rows":
            return {k: (np.dtype(v.dtype), tuple(v.shape[1:]), False) for k, v in a.items()}
        out = {}
        for k, v in a.items():
            per_doc = tuple(v.shape[:2]) == (2, 3)
            out[k] = (np.dtype(v.dtype), tuple(v.shape[2:] if per_doc else v.shape[1:]), per_doc)
        return out

    # ----------------------------------------------------------------------- columns
    def columns(self, available: Sequence[str], source: str) -> dict[str, str]:
        """``signature input -> input column``; names every missing column."""
        found, missing = {}, []
        for name in self.inputs:
            if name in available:
                found[name] = name
                continue
            alias = [c for c in available if serving_name(c) == name]
            if alias:
                found[name] = alias[0]
            else:
                missing.append(name)
        if self.layout == "lists" and self.group not in available:
            missing.append(self.group)
        if missing:
            raise BatchInputError(
                f"{source}: columns {missing} missing; signature {self.signature!r} of the "
                f"{self.bundle.card.get('task', '?')} model needs {self.required()} (a column may "
                f"also carry the training name an input was made from, e.g. 'marital-status' "
                f"for 'marital_status'); the input has {list(available)}")
        return found

    def required(self) -> list[str]:
        return ([self.group] if self.layout == "lists" else []) + list(self.inputs)

    def numeric_inputs(self) -> list[str]:
        return [k for k, (_, t) in self.inputs.items() if not _is_string(t)]

    def output_fields(self, keep: Sequence[str]) -> list[pa.Field]:
        """The fields written after the ``keep`` columns: ``doc`` (lists) and the outputs."""
        clash = [n for n in keep if n in self.outputs or (self.layout == "lists" and n == DOC)]
        if clash:
            raise ConfigError(f"keep={clash}: these columns clash with model outputs "
                              f"{list(self.outputs)}" + (f" or '{DOC}'" if self.layout == "lists"
                                                         else ""))
        fields = [pa.field(DOC, pa.int32())] if self.layout == "lists" else []
        for k, (dt, trailing, _) in self.outputs.items():
            t = _arrow_type(dt)
            fields.append(pa.field(k, pa.list_(t) if trailing else t))
        return fields

    # ------------------------------------------------------------------------ scoring
    def _numpy(self, table: pa.Table, column: str, name: str) -> np.ndarray:
        dims, dtype = self.inputs[name]
        trailing = dims[2:] if self.layout == "lists" else dims[1:]
        return column_numpy(table.column(column), column, dtype, tuple(trailing))

    def prepare_rows(self, table: pa.Table, columns: Mapping[str, str]) -> tuple[dict, int]:
        """Raw columns -> encoded inputs padded to ``batch_size`` rows (host side)."""
        n = table.num_rows
        raw = {name: self._numpy(table, col, name) for name, col in columns.items()}
        encoded = self.bundle.encode(raw, self.signature)
        return {k: _pad_rows(v, self.batch_size) for k, v in encoded.items()}, n

    def predict(self, encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.fn(self.bundle.variables, self.bundle.consts, encoded)
        return self.sig.lookup_np({k: np.asarray(v) for k, v in out.items()})

    def rows_table(self, keep: pa.Table, out: Mapping[str, np.ndarray], n: int) -> pa.Table:
        fields = self.output_fields(keep.column_names)
        arrays = list(keep.columns) + [_arrow_column(out[f.name][:n], f.type) for f in fields]
        return pa.Table.from_arrays(arrays, schema=pa.schema(list(keep.schema) + fields))

    def bucket(self, length: int) -> int:
        return max(self.min_list, 1 << max(0, math.ceil(math.log2(length))))

    def lists_per_call(self, bucket: int) -> int:
        return max(1, self.batch_size // bucket)

    def prepare_lists(self, lists: Sequence[pa.Table], columns: Mapping[str, str], bucket: int
                      ) -> tuple[dict, list[int]]:
        """Complete lists (one table each) -> encoded ``[lists_per_call, bucket, ...]`` inputs."""
        rows = self.lists_per_call(bucket)
        lengths = [t.num_rows for t in lists]
        raw = {}
        for name, col in columns.items():
            dims, dtype = self.inputs[name]
            docs = [self._numpy(t, col, name) for t in lists]
            fill = "" if _is_string(dtype) else 0
            x = np.full((rows, bucket) + tuple(dims[2:]), fill,
                        dtype=object if _is_string(dtype) else docs[0].dtype)
            for i, d in enumerate(docs):
                x[i, :len(d)] = d
            x[len(docs):] = x[0]            # padding lists repeat the first list
            raw[name] = x
        mask = np.zeros((rows, bucket), bool)
        for i, n in enumerate(lengths):
            mask[i, :n] = True
        mask[len(lists):] = mask[0]
        raw[self.mask] = mask
        return self.bundle.encode(raw, self.signature), lengths

    def lists_table(self, lists: Sequence[pa.Table], keep: Sequence[str],
                    out: Mapping[str, np.ndarray], lengths: Sequence[int]) -> pa.Table:
        keep_table = pa.concat_tables([t.select(list(keep)) for t in lists])
        fields = self.output_fields(keep)
        doc = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        arrays = list(keep_table.columns) + [pa.array(doc, pa.int32())]
        for f in fields[1:]:
            v = out[f.name]
            if self.outputs[f.name][2]:
                v = np.concatenate([v[i, :n] for i, n in enumerate(lengths)])
            else:
                v = np.repeat(v[:len(lengths)], lengths, axis=0)
            arrays.append(_arrow_column(v, f.type))
        return pa.Table.from_arrays(arrays, schema=pa.schema(list(keep_table.schema) + fields))


_SCORERS: collections.OrderedDict = collections.OrderedDict()


def cached_scorer(model: pathlib.Path, cfg: BatchPredictConfig, keep: int = 4) -> Scorer:
    """A :class:`Scorer` for ``model`` reused across runs in this process while the bundle's
    files are unchanged, so repeated jobs do not compile the predict function again."""
    from mlsd_jax.export import load_bundle
    from mlsd_jax.export.bundle import CARD, VARIABLES

    extra = model if (model / CARD).exists() else model / "assets.extra"
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in (extra / CARD, extra / VARIABLES))
    key = (str(model.resolve()), stamp, cfg.signature, cfg.batch_size, cfg.group, cfg.min_list)
    if key in _SCORERS:
        _SCORERS.move_to_end(key)
        return _SCORERS[key]
    scorer = Scorer(load_bundle(model), cfg.signature, batch_size=cfg.batch_size,
                    group=cfg.group, min_list=cfg.min_list)
    _SCORERS[key] = scorer
    while len(_SCORERS) > keep:
        _SCORERS.popitem(last=False)
    return scorer


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """Pads the leading axis to ``rows`` by repeating the last row (valid values, no NaN)."""
    if len(x) == rows:
        return x
    if len(x) > rows:
        raise ValueError(f"batch of {len(x)} rows is larger than batch_size={rows}")
    return np.concatenate([x, np.repeat(x[-1:], rows - len(x), axis=0)])


def _arrow_column(v: np.ndarray, type_: pa.DataType) -> pa.Array:
    if not pa.types.is_list(type_):
        return pa.array(v, type_)
    flat = np.ascontiguousarray(v).reshape(len(v), -1)
    offsets = np.arange(len(v) + 1, dtype=np.int32) * flat.shape[1]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.reshape(-1),
                                                                type_.value_type))


def column_numpy(col: pa.ChunkedArray | pa.Array, name: str, dtype, trailing: tuple = ()
                 ) -> np.ndarray:
    """One input column as the numpy array a signature input takes; names the column on error.

    Strings come as object arrays (nulls -> ``None``, read as missing by the encoders; integer
    ids are accepted and written as text). Float inputs take any numbers, nulls -> NaN. Inputs
    with trailing dims read list columns of exactly that many values per row.
    """
    import pyarrow.compute as pc

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    t, dtype = col.type, np.dtype(dtype)
    if trailing:
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            raise BatchInputError(f"column {name!r} has type {t}; expected a list of "
                                  f"{int(np.prod(trailing))} {dtype.name} values per row")
        if col.null_count:
            raise BatchInputError(f"column {name!r} has {col.null_count} null lists; expected "
                                  f"{int(np.prod(trailing))} values in every row")
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        size = int(np.prod(trailing))
        bad = np.flatnonzero(lengths != size)
        if bad.size:
            raise BatchInputError(f"column {name!r} row {int(bad[0])} has {int(lengths[bad[0]])} "
                                  f"values; expected {size} ({list(trailing)})")
        values = column_numpy(pc.list_flatten(col), name, dtype)
        return values.reshape((len(col),) + tuple(trailing))
    if pa.types.is_dictionary(t):
        col, t = col.dictionary_decode(), t.value_type
    if _is_string(dtype):
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return np.asarray(col.to_pylist(), dtype=object)
        if pa.types.is_integer(t):
            return np.asarray([None if v is None else str(v) for v in col.to_pylist()], dtype=object)
        raise BatchInputError(f"column {name!r} has type {t}; expected strings (or integer ids)")
    numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if dtype.kind == "b":
        if not pa.types.is_boolean(t) or col.null_count:
            raise BatchInputError(f"column {name!r} has type {t}"
                                  f"{' with nulls' if col.null_count else ''}; expected booleans")
        return col.to_numpy(zero_copy_only=False)
    if dtype.kind in "iu":
        if not pa.types.is_integer(t) or col.null_count:
            raise BatchInputError(f"column {name!r} has type {t}"
                                  f"{' with nulls' if col.null_count else ''}; expected integers "
                                  f"({dtype.name}) in every row")
        return col.to_numpy(zero_copy_only=False).astype(dtype)
    if not (numeric or pa.types.is_boolean(t) or pa.types.is_null(t)):
        sample = [v for v in col.slice(0, 3).to_pylist()]
        raise BatchInputError(f"column {name!r} has type {t} (e.g. {sample}); expected numbers "
                              f"({dtype.name}; missing values as null or NaN)")
    return col.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False).astype(dtype)


def parse_csv_numbers(table: pa.Table, numeric: Sequence[str], source: str) -> pa.Table:
    """CSV columns read as text -> float64 for numeric inputs (missing markers -> NaN); other
    text columns get nulls as empty strings (pyarrow's CSV semantics, which training used)."""
    import pyarrow.compute as pc

    arrays = []
    for name, col in zip(table.column_names, table.columns):
        col = col.fill_null("")
        if name in numeric:
            missing = pc.is_in(col, pa.array(sorted(_CSV_NULLS)))
            text = pc.if_else(missing, pa.scalar(None, pa.string()), pc.utf8_trim_whitespace(col))
            try:
                col = pc.cast(text, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values = text.to_pylist()
                for i, v in enumerate(values):
                    try:
                        v is None or float(v)
                    except ValueError:
                        raise BatchInputError(
                            f"{source}: column {name!r} row {i} is {v!r}; expected a number "
                            f"(or a missing marker such as '' or 'NA')") from None
                raise
        arrays.append(col)
    return pa.Table.from_arrays(arrays, names=table.column_names)


# ------------------------------------------------------------------------------- streams
def rebatch(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last may be shorter) from tables of any size."""
    buf: list[pa.Table] = []
    have = 0
    for t in tables:
        if not t.num_rows:
            continue
        buf.append(t)
        have += t.num_rows
        if have < rows:
            continue
        whole = pa.concat_tables(buf)
        start = 0
        while whole.num_rows - start >= rows:
            yield whole.slice(start, rows)
            start += rows
        buf = [whole.slice(start)] if start < whole.num_rows else []
        have = whole.num_rows - start
    if have:
        yield pa.concat_tables(buf)


def groups(tables: Iterable[pa.Table], column: str, source: str) -> Iterator[pa.Table]:
    """Tables of the consecutive rows of one ``column`` value each (one list per query).

    A value that comes back after other values is an error: the rows of a list must be
    contiguous (LETOR files keep each query's lines together), so a stream never holds more
    than one list.
    """
    seen: set = set()
    carry: pa.Table | None = None
    for t in tables:
        if not t.num_rows:
            continue
        if carry is not None:
            t = pa.concat_tables([carry, t])
        values = np.asarray(t.column(column).to_numpy(zero_copy_only=False))
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        ends = np.r_[starts[1:], len(values)]
        for s, e in zip(starts[:-1], ends[:-1]):
            yield _new_group(t, values, s, e, seen, column, source)
        carry = t.slice(int(starts[-1]))
    if carry is not None and carry.num_rows:
        values = np.asarray(carry.column(column).to_numpy(zero_copy_only=False))
        yield _new_group(carry, values, 0, len(values), seen, column, source)


def _new_group(t, values, s, e, seen, column, source) -> pa.Table:
    key = values[s].item() if hasattr(values[s], "item") else values[s]
    if key in seen:
        raise BatchInputError(f"{source}: {column} {key!r} appears again after other {column} "
                              f"values; the rows of one list must be contiguous")
    seen.add(key)
    return t.slice(int(s), int(e - s))


def _ahead(items: Iterator[Any], prepare: Callable[[Any], Any], workers: int, depth: int
           ) -> Iterator[Any]:
    """``prepare(item)`` for each item, in order, computed ahead by a reader thread and
    ``workers`` threads; at most ``depth`` prepared items wait (bounded memory)."""
    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
                pending: collections.deque = collections.deque()
                for item in items:
                    pending.append(pool.submit(prepare, item))
                    while len(pending) >= depth:
                        if not _put(out, (pending.popleft(), None), stop):
                            return
                while pending:
                    if not _put(out, (pending.popleft(), None), stop):
                        return
            _put(out, (None, done), stop)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            _put(out, (None, e), stop)

    thread = threading.Thread(target=produce, daemon=True, name="batch-reader")
    thread.start()
    try:
        while True:
            future, signal = out.get()
            if signal is done:
                return
            if signal is not None:
                raise signal
            yield future.result()
    finally:
        stop.set()
        thread.join(timeout=5)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def score_stream(scorer: Scorer, tables: Iterable[pa.Table], columns: Mapping[str, str],
                 keep: Sequence[str], *, source: str = "<input>", workers: int = 1,
                 depth: int = 4) -> Iterator[pa.Table]:
    """Scores a stream of input tables into output tables (both engines run this).

    ``columns`` maps signature inputs to input columns (:meth:`Scorer.columns`); ``keep``
    names input columns copied to the output, before the outputs (:meth:`Scorer.output_fields`).
    """
    if scorer.layout == "rows":
        def prepare(t):
            return t.select(list(keep)), *scorer.prepare_rows(t, columns)

        for keep_table, encoded, n in _ahead(rebatch(tables, scorer.batch_size), prepare,
                                             workers, depth):
            yield scorer.rows_table(keep_table, scorer.predict(encoded), n)
        return

    def prepare(item):
        bucket, lists = item
        return (lists, *scorer.prepare_lists(lists, columns, bucket))

    for lists, encoded, lengths in _ahead(_buckets(scorer, groups(tables, scorer.group, source)),
                                          prepare, workers, depth):
        yield scorer.lists_table(lists, keep, scorer.predict(encoded), lengths)


def _buckets(scorer: Scorer, lists: Iterable[pa.Table]) -> Iterator[tuple[int, list[pa.Table]]]:
    """Lists gathered by length bucket into full calls; partial calls are flushed at the end."""
    pending: dict[int, list[pa.Table]] = {}
    for t in lists:
        b = scorer.bucket(t.num_rows)
        pending.setdefault(b, []).append(t)
        if len(pending[b]) == scorer.lists_per_call(b):
            yield b, pending.pop(b)
    for b in sorted(pending):
        yield b, pending[b]


# ------------------------------------------------------------------------------- readers
def detect_format(path: str | os.PathLike, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ConfigError(f"format={fmt!r}: expected one of {list(FORMATS)}")
        return fmt
    p = pathlib.Path(path)
    name = p.name.lower()
    if p.is_dir() or ".parquet" in name or name.endswith(".pq"):
        return "parquet"
    if any(name.endswith(s) for s in (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".csv.bz2")):
        return "csv"
    if any(s in name for s in (".txt", ".letor", ".svmlight")):
        return "letor"
    raise ConfigError(f"input={str(p)!r}: cannot tell its format from the name; set "
                      f"format=parquet, format=csv or format=letor")


@dataclasses.dataclass
class Source:
    """An opened input: its column names, a row count when known, and a table stream.

    ``read(columns, numeric)`` streams ``columns``; ``numeric`` names the columns that feed
    number inputs (CSV text is parsed for those).
    """

    columns: list[str]
    rows: int | None
    read: Callable[[Sequence[str], Sequence[str]], Iterator[pa.Table]]
    unit: str = "rows"


def open_parquet(path: pathlib.Path, batch_rows: int) -> Source:
    """A Parquet file or a folder of Parquet files (read in file order)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(str(path), format="parquet")

    def read(columns, numeric):
        for b in dataset.to_batches(columns=list(columns), batch_size=batch_rows):
            yield pa.Table.from_batches([b])

    return Source(list(dataset.schema.names), dataset.count_rows(), read)


def open_csv(path: pathlib.Path) -> Source:
    """CSV (``.tsv``: tabs) read as text; the number columns are parsed by
    :func:`parse_csv_numbers` (the same code on Spark, so both engines read every cell alike)."""
    import pyarrow.csv as pcsv

    delimiter = "\t" if ".tsv" in path.name.lower() else ","
    parse = pcsv.ParseOptions(delimiter=delimiter)
    with pcsv.open_csv(path, parse_options=parse,
                       read_options=pcsv.ReadOptions(block_size=1 << 16)) as r:
        names = list(r.schema.names)

    def read(columns, numeric):
        convert = pcsv.ConvertOptions(include_columns=list(columns),
                                      column_types={c: pa.string() for c in columns})
        with pcsv.open_csv(path, parse_options=parse, convert_options=convert,
                           read_options=pcsv.ReadOptions(block_size=8 << 20)) as reader:
            for b in reader:
                yield parse_csv_numbers(pa.Table.from_batches([b]), numeric, str(path))

    return Source(names, None, read)


def letor_table(lines: Sequence[bytes | str], num_features: int, features: str, path: str,
                first_line: int = 1, qid_column: str = "qid") -> pa.Table:
    """LETOR lines -> a table of documents: ``qid``, ``label``, ``features`` (a list of F floats).

    Errors name ``path:line`` (``first_line`` is the number of ``lines[0]`` in the file).
    """
    from mlsd_jax.data.letor import LetorFormatError, parse_letor_lines

    try:
        x, labels, qids = parse_letor_lines(lines, num_features=num_features, path=path,
                                            max_label=None)
    except LetorFormatError as e:  # numbered as lines of the file; the width is the model's
        what = e.what
        if "(num_features=" in what:
            what = what.split(" (num_features=")[0] + f" (the model takes {num_features} features)"
        raise LetorFormatError(e.path, e.lineno + first_line - 1, what, e.line, hint=e.hint,
                               whole_file=e.whole_file) from None
    return pa.table({qid_column: pa.array(qids, pa.int64()),
                     "label": pa.array(labels, pa.float32()),
                     features: _arrow_column(x, pa.list_(pa.float32()))})


def letor_feature(scorer: Scorer) -> tuple[str, int]:
    """The one ``[batch, list, F]`` number input a LETOR line fills, and F."""
    dims = {k: list(d) for k, (d, t) in scorer.inputs.items()}
    floats = [k for k, (d, t) in scorer.inputs.items() if len(d) == 3 and not _is_string(t)]
    if scorer.layout != "lists" or len(scorer.inputs) != 1 or not floats:
        raise BatchInputError(f"format=letor gives one feature vector per document; signature "
                              f"{scorer.signature!r} takes {dims} (use Parquet or CSV columns)")
    return floats[0], int(scorer.inputs[floats[0]][0][2])


def open_letor(path: pathlib.Path, scorer: Scorer) -> Source:
    """LETOR / SVMlight text (plain, .gz, .bz2, .xz), streamed in chunks of lines."""
    from mlsd_jax.data.letor import _iter_chunks, _open_data, _sniff

    feature, width = letor_feature(scorer)
    compression = _sniff(path)

    def read(columns, numeric):
        line = 1
        with _open_data(path, compression) as f:
            for lines in _iter_chunks(f, 65536, 16 << 20, path):
                yield letor_table(lines, width, feature, str(path), line, scorer.group)
                line += len(lines)

    return Source([scorer.group, "label", feature], None, read, unit="docs")


def open_source(path: pathlib.Path, fmt: str, scorer: Scorer) -> Source:
    if not path.exists():
        raise FileNotFoundError(f"input={str(path)!r} does not exist")
    if fmt == "parquet":
        return open_parquet(path, scorer.batch_size)
    if fmt == "csv":
        lists = [k for k, (d, _) in scorer.inputs.items()
                 if len(d) > (2 if scorer.layout == "lists" else 1)]
        if lists:
            raise BatchInputError(f"{path}: a CSV cell holds one value; inputs {lists} of "
                                  f"signature {scorer.signature!r} take several (use Parquet)")
        return open_csv(path)
    if path.is_dir():
        raise BatchInputError(f"input={str(path)!r} is a folder; format=letor reads one file")
    return open_letor(path, scorer)


def plan(scorer: Scorer, source: Source, fmt: str, keep: Sequence[str], where: str
         ) -> tuple[dict[str, str], list[str], list[str], list[str]]:
    """Resolves columns: ``(input -> column, keep, columns to read, number columns)``.

    The lists layout always writes the query column (and LETOR's labels) before ``keep``.
    """
    base = []
    if scorer.layout == "lists":
        base = [scorer.group] + (["label"] if fmt == "letor" else [])
    keep = base + [k for k in keep if k not in base]
    columns = scorer.columns(source.columns, where)
    missing = [k for k in keep if k not in source.columns]
    if missing:
        raise BatchInputError(f"{where}: keep columns {missing} not found; the input has "
                              f"{list(source.columns)}")
    scorer.output_fields(keep)
    needed = list(dict.fromkeys(list(columns.values()) + keep))
    numeric = [columns[k] for k in scorer.numeric_inputs()]
    return columns, keep, needed, numeric


# ------------------------------------------------------------------------------- local engine
def predict_local(cfg: BatchPredictConfig) -> dict[str, Any]:
    """Streams ``cfg.input`` through the model into one Parquet file; returns a summary.

    The file is written under a temporary name and renamed when complete, so a failed or
    interrupted run leaves no partial output.
    """
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    model = resolve_model(cfg.model)
    fmt = detect_format(cfg.input, cfg.format)
    out_path = _check_output(cfg)
    scorer = cached_scorer(model, cfg)
    src_path = pathlib.Path(cfg.input)
    source = open_source(src_path, fmt, scorer)
    columns, keep, needed, numeric = plan(scorer, source, fmt, cfg.keep, str(src_path))
    counted = _Counted(_progress(source.read(needed, numeric), source, cfg.progress))
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    writer, buf, buffered, rows_out = None, [], 0, 0
    try:
        for table in score_stream(scorer, counted, columns, keep, source=str(src_path),
                                  workers=cfg.workers or os.cpu_count() or 1):
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            buf.append(table)
            buffered += table.num_rows
            rows_out += table.num_rows
            if buffered >= cfg.row_group_size:  # whole row groups; the rest waits
                whole = pa.concat_tables(buf)
                cut = buffered - buffered % cfg.row_group_size
                writer.write_table(whole.slice(0, cut), row_group_size=cfg.row_group_size)
                buf, buffered = [whole.slice(cut)], buffered - cut
        if writer is None:
            raise BatchInputError(f"{src_path}: no rows to score")
        if buffered:
            writer.write_table(pa.concat_tables(buf), row_group_size=cfg.row_group_size)
        writer.close()
        writer = None
        os.replace(tmp, out_path)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return summary(cfg, model, scorer, fmt, counted.rows, rows_out,
                   time.perf_counter() - t0, str(out_path))


class _Counted:
    """Counts the rows that pass through a table stream."""

    def __init__(self, tables: Iterable[pa.Table]):
        self.tables, self.rows = tables, 0

    def __iter__(self):
        for t in self.tables:
            self.rows += t.num_rows
            yield t


def _check_output(cfg: BatchPredictConfig) -> pathlib.Path:
    out = pathlib.Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"output={str(out)!r} exists; remove it or set overwrite=true")
    if out.is_dir() and cfg.engine == "local":
        raise FileExistsError(f"output={str(out)!r} is a folder; the local engine writes one "
                              f"Parquet file")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _progress(stream: Iterator[pa.Table], source: Source, enabled: bool) -> Iterator[pa.Table]:
    if not enabled:
        yield from stream
        return
    from tqdm.auto import tqdm

    with tqdm(total=source.rows, unit=f" {source.unit}", unit_scale=True, desc="scoring",
              file=sys.stderr, smoothing=0.1) as bar:
        for t in stream:
            yield t
            bar.update(t.num_rows)


def summary(cfg: BatchPredictConfig, model, scorer: Scorer, fmt: str, rows_in: int,
            rows_out: int, seconds: float, output: str) -> dict[str, Any]:
    return {"model": str(model), "task": scorer.bundle.card.get("task"),
            "version": pathlib.Path(model).name, "signature": cfg.signature,
            "engine": cfg.engine, "format": fmt, "layout": scorer.layout, "input": str(cfg.input),
            "output": output, "rows_in": int(rows_in), "rows_out": int(rows_out),
            "seconds": round(seconds, 3),
            "rows_per_s": round(rows_in / seconds, 1) if seconds > 0 else None,
            "batch_size": scorer.batch_size}


# ------------------------------------------------------------------------------- Spark engine
def spark_session(master: str = "local[*]", app_name: str = "mlsd_jax-batch-predict",
                  conf: Mapping[str, Any] | None = None):
    """A SparkSession whose Python workers run this interpreter (``PYSPARK_PYTHON``).

    ``master``: ``local[*]`` (all cores of this machine) or a cluster URL
    (``spark://host:7077``, ``yarn``, ``k8s://...``); the executors then need this package
    installed, and the input and output paths must be reachable from them.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    settings = {"spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.python.worker.reuse": "true"}
    if master.startswith("local"):
        # Local Python workers import this package from where the driver found it.
        root = str(pathlib.Path(__file__).resolve().parents[2])
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        settings["spark.executorEnv.PYTHONPATH"] = os.pathsep.join([root] + paths)
        settings["spark.ui.enabled"] = "false"
    settings.update({str(k): str(v) for k, v in (conf or {}).items()})
    for k, v in settings.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def bundle_payload(model: pathlib.Path) -> dict[str, Any]:
    """The bundle's card and variables as bytes, broadcast to Spark executors."""
    from mlsd_jax.export.bundle import CARD, VARIABLES

    extra = model if (model / CARD).exists() else model / "assets.extra"
    card, variables = (extra / CARD).read_text(), (extra / VARIABLES).read_bytes()
    key = hashlib.sha256(card.encode() + variables).hexdigest()
    return {"path": str(model), "card": card, "variables": variables, "key": key}


_WORKER_SCORERS: dict = {}


def _worker_scorer(payload: Mapping[str, Any], settings: tuple) -> Scorer:
    """The executor's scorer, built once per Python worker from the broadcast bundle."""
    key = (payload["key"], settings)
    if key not in _WORKER_SCORERS:
        from flax import serialization

        from mlsd_jax.export.bundle import Bundle, rebuild_serving

        card = json.loads(payload["card"])
        state = serialization.msgpack_restore(payload["variables"])
        bundle = Bundle(pathlib.Path(payload["path"]), card, rebuild_serving(card),
                        state["variables"], state["consts"])
        signature, batch_size, group, min_list = settings
        _WORKER_SCORERS[key] = Scorer(bundle, signature, batch_size=batch_size, group=group,
                                      min_list=min_list)
    return _WORKER_SCORERS[key]


def _score_partition(frames, *, payload, settings, arrow_schema, columns, keep, numeric, fmt,
                     source, rows_in, rows_out):
    """``mapInPandas`` body: pandas frames of one partition -> scored pandas frames."""
    scorer = _worker_scorer(payload.value, settings)

    def tables():
        for pdf in frames:
            t = pa.Table.from_pandas(pdf, schema=arrow_schema, preserve_index=False)
            if _LINE in t.column_names:
                t = t.drop_columns([_LINE])
            if fmt == "csv":
                t = parse_csv_numbers(t, numeric, source)
            rows_in.add(t.num_rows)
            yield t

    for out in score_stream(scorer, tables(), columns, keep, source=source, workers=1):
        rows_out.add(out.num_rows)
        yield out.to_pandas()


def _parse_letor_partition(frames, *, width, feature, group, source):
    """``mapInPandas`` body: LETOR text lines (with their input order) -> documents.

    Blank and comment lines are dropped first, so each parsed document keeps its line's order
    key. Spark does not know file line numbers, so errors quote the line instead.
    """
    import pandas as pd

    from mlsd_jax.data.letor import LetorFormatError

    for pdf in frames:
        lines = pdf["value"].tolist()
        kept = [i for i, line in enumerate(lines)
                if line.strip() and not line.lstrip().startswith("#")]
        if not kept:
            continue
        try:
            t = letor_table([lines[i] for i in kept], width, feature, source, 1, group)
        except LetorFormatError as e:
            raise LetorFormatError(e.path, 1, e.what, e.line, hint=e.hint,
                                   whole_file=True) from None
        out = t.to_pandas()
        out[_LINE] = pdf[_LINE].to_numpy()[kept]
        yield pd.DataFrame({group: out[group], "label": out["label"], feature: out[feature],
                            _LINE: out[_LINE]})


def _spark_type(t: pa.DataType):
    from pyspark.sql import types as T

    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return T.ArrayType(_spark_type(t.value_type))
    simple = {pa.float32(): T.FloatType(), pa.float64(): T.DoubleType(),
              pa.int32(): T.IntegerType(), pa.int64(): T.LongType(), pa.int16(): T.ShortType(),
              pa.int8(): T.ByteType(), pa.bool_(): T.BooleanType(), pa.string(): T.StringType(),
              pa.large_string(): T.StringType()}
    if t not in simple:
        raise BatchInputError(f"model output type {t} has no Spark column type here")
    return simple[t]


def _read_spark(spark, cfg: BatchPredictConfig, fmt: str, scorer: Scorer):
    """The input as a Spark DataFrame with the column names of the local readers."""
    from pyspark.sql import functions as F

    if fmt == "parquet":
        return spark.read.parquet(cfg.input)
    if fmt == "csv":
        # Every cell as text, RFC 4180 quotes; the number inputs are parsed in Python as locally.
        sep = "\t" if ".tsv" in cfg.input.lower() else ","
        return spark.read.options(header=True, sep=sep, quote='"', escape='"',
                                  inferSchema=False).csv(cfg.input)
    feature, width = letor_feature(scorer)
    lines = spark.read.text(cfg.input).withColumn(_LINE, F.monotonically_increasing_id())
    schema = f"`{scorer.group}` long, label float, `{feature}` array<float>, {_LINE} long"
    parse = functools.partial(_parse_letor_partition, width=width, feature=feature, group=scorer.group,
                     source=cfg.input)
    return lines.mapInPandas(parse, schema=schema)


def predict_spark(cfg: BatchPredictConfig, spark=None) -> dict[str, Any]:
    """Scores ``cfg.input`` with ``mapInPandas`` into a Parquet folder; returns a summary.

    ``spark``: an existing session (else one is started from ``cfg.spark`` and stopped at the
    end). Lists are grouped by a shuffle on the query column, then sorted by input order within
    each query, so each list is whole in one partition whatever the input's splits.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    t0 = time.perf_counter()
    model = resolve_model(cfg.model)
    fmt = detect_format(cfg.input, cfg.format)
    if "://" not in cfg.input and not pathlib.Path(cfg.input).exists():
        raise FileNotFoundError(f"input={cfg.input!r} does not exist")
    if "://" not in cfg.output:
        _check_output(cfg)
    scorer = cached_scorer(model, cfg)
    own = spark is None
    if own:
        spark = spark_session(**{"master": "local[*]", "app_name": "mlsd_jax-batch-predict",
                                 **dict(cfg.spark)})
    try:
        df = _read_spark(spark, cfg, fmt, scorer)
        source = Source([c for c in df.columns if c != _LINE], None, lambda c, n: iter(()))
        columns, keep, needed, numeric = plan(scorer, source, fmt, cfg.keep, cfg.input)
        if scorer.layout == "lists":
            if _LINE not in df.columns:
                df = df.withColumn(_LINE, F.monotonically_increasing_id())
            parts = max(spark.sparkContext.defaultParallelism, df.rdd.getNumPartitions())
            df = (df.select(*needed, _LINE).repartition(parts, scorer.group)
                  .sortWithinPartitions(scorer.group, _LINE))
        else:
            df = df.select(*needed)
        fields = {f.name: f for f in df.schema.fields}
        keep_fields = [T.StructField(k, T.DoubleType() if fmt == "csv" and k in numeric
                                     else fields[k].dataType) for k in keep]
        out_schema = T.StructType(keep_fields + [T.StructField(f.name, _spark_type(f.type))
                                                 for f in scorer.output_fields(keep)])
        payload = spark.sparkContext.broadcast(bundle_payload(model))
        rows_in, rows_out = spark.sparkContext.accumulator(0), spark.sparkContext.accumulator(0)
        body = functools.partial(_score_partition, payload=payload,
                        settings=(cfg.signature, scorer.batch_size, scorer.group, scorer.min_list),
                        arrow_schema=to_arrow_schema(df.schema), columns=columns, keep=keep,
                        numeric=numeric, fmt=fmt, source=cfg.input, rows_in=rows_in,
                        rows_out=rows_out)
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(scorer.batch_size))
        writer = df.mapInPandas(body, schema=out_schema).write
        writer = writer.mode("overwrite" if cfg.overwrite else "errorifexists")
        try:
            writer.parquet(cfg.output)
        except Exception as e:  # noqa: BLE001 - a worker's input error, raised again as one
            raise _worker_error(e) from None
    finally:
        if own:
            spark.stop()
    return summary(cfg, model, scorer, fmt, rows_in.value, rows_out.value,
                   time.perf_counter() - t0, cfg.output)


def _worker_error(e: Exception) -> Exception:
    """An input error raised on an executor, as the same one-line error on the driver."""
    text = str(e)
    for name in ("BatchInputError", "LetorFormatError", "ConfigError"):
        marker = f"{name}: "
        if marker in text:
            message = text.split(marker, 1)[1].splitlines()[0].strip()
            return BatchInputError(message)
    return e


def predict(cfg: BatchPredictConfig) -> dict[str, Any]:
    """Runs ``cfg.engine`` (``local`` or ``spark``)."""
    if cfg.engine not in ENGINES:
        raise ConfigError(f"engine={cfg.engine!r}: expected one of {list(ENGINES)}")
    if cfg.batch_size < 1 or cfg.row_group_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size}, row_group_size={cfg.row_group_size}: "
                          f"expected positive numbers of rows")
    return predict_local(cfg) if cfg.engine == "local" else predict_spark(cfg)
