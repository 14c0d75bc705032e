"""Reference profiles: a small, JSON-serialisable summary of each column of a reference set.

A :class:`Profile` holds one :class:`NumericProfile` or :class:`CategoricalProfile` per column
(features, predictions and labels alike) and is what the drift tests of
:mod:`mlsd_jax.monitoring.drift` compare a window of new rows against.

* **numeric**: count, missing count and rate, mean / std (ddof 0) / min / max, the 1st..99th
  percentiles (numpy's linear interpolation), a fixed-edge histogram whose inner edges are the
  reference's 5%, 10%, ..., 95% quantiles (duplicates dropped; the outer bins are open, so every
  value of a later window falls in a bin), and a seeded uniform sample of at most
  ``sample_size`` (default 2,000) non-missing values drawn without replacement (what a reservoir
  of that size holds after the stream), used for exact two-sample KS and Wasserstein tests;
* **categorical**: count, missing count and rate, the number of distinct values, and the counts
  of the ``top_k`` (default 50) most frequent values (ties broken by value) plus one ``other``
  bucket for the rest.  Values are compared as strings (``str(v)``); ``None`` and float NaN are
  missing.

Kinds are inferred by :meth:`Profile.fit` unless given: strings, booleans and objects are
categorical; integer columns with at most ``max_int_levels`` (default 20) distinct values are
categorical; other numbers are numeric.  ``Profile.to_json`` / ``Profile.from_json`` round-trip
exactly; the JSON carries ``schema_version`` (:data:`SCHEMA_VERSION`) and loading another version
fails with a clear error.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping

import numpy as np

__all__ = ["SCHEMA_VERSION", "NumericProfile", "CategoricalProfile", "Profile", "as_categories",
           "infer_kind"]

SCHEMA_VERSION = 1
PERCENTILES = tuple(range(1, 100))
HIST_QUANTILES = tuple(range(5, 100, 5))


def _missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        # None or NaN (NaN is the only value that differs from itself); vectorised comparisons.
        return np.equal(values, None) | (values != values)
    return np.zeros(values.shape, dtype=bool)


def as_categories(values) -> tuple[np.ndarray, np.ndarray]:
    """``(strings, missing)``: the present values as a numpy unicode array and the missing mask."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D column, got shape {values.shape}")
    missing = _missing_mask(values)
    present = values[~missing]
    if present.dtype.kind == "O":
        present = present.astype(str)
    elif present.dtype.kind in "iub":
        present = present.astype(np.int64).astype(str) if present.dtype.kind != "b" else present.astype(str)
    elif present.dtype.kind == "f":
        # Integral floats print as integers, so 3.0 in one window and 3 in another agree.
        integral = np.all(present == np.round(present))
        present = present.astype(np.int64).astype(str) if integral else present.astype(str)
    else:
        present = present.astype(str)
    return present, missing


def infer_kind(values, max_int_levels: int = 20) -> str:
    """``"numeric"`` or ``"categorical"`` for one column (see the module docstring)."""
    values = np.asarray(values)
    if values.dtype.kind in "OUSb":
        return "categorical"
    if values.dtype.kind in "iu":
        return "categorical" if np.unique(values).size <= max_int_levels else "numeric"
    if values.dtype.kind == "f":
        return "numeric"
    raise TypeError(f"cannot profile a column of dtype {values.dtype}")


@dataclasses.dataclass
class NumericProfile:
    count: int
    missing: int
    mean: float
    std: float
    min: float
    max: float
    percentiles: list  # values at PERCENTILES
    edges: list  # inner histogram edges (increasing); bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    hist: list  # counts per bin, len(edges) + 1
    sample: list  # seeded uniform sample of the non-missing values
    kind: str = "numeric"

    @property
    def missing_rate(self) -> float:
        return self.missing / self.count if self.count else 0.0

    @property
    def iqr(self) -> float:
        return float(self.percentiles[74] - self.percentiles[24])

    @classmethod
    def fit(cls, values, *, sample_size: int = 2000, rng: np.random.Generator | None = None,
            name: str = "column") -> "NumericProfile":
        x = np.asarray(values)
        if x.dtype.kind not in "iufb":
            raise TypeError(f"column {name!r}: a numeric profile needs numbers, got dtype {x.dtype}")
        x = x.astype(np.float64, copy=False)
        if x.ndim != 1:
            raise ValueError(f"column {name!r}: expected a 1-D column, got shape {x.shape}")
        miss = np.isnan(x)
        v = x[~miss]
        if v.size == 0:
            raise ValueError(f"column {name!r}: no non-missing values to profile")
        if np.isinf(v).any():
            raise ValueError(f"column {name!r}: infinite values cannot be profiled")
        v = np.sort(v)
        pct = np.percentile(v, PERCENTILES)
        edges = np.unique(np.percentile(v, HIST_QUANTILES))
        hist = histogram(v, edges, sorted_values=True)
        rng = rng if rng is not None else np.random.default_rng(0)
        take = rng.choice(v.size, size=min(sample_size, v.size), replace=False)
        return cls(count=int(x.size), missing=int(miss.sum()), mean=float(v.mean()),
                   std=float(v.std()), min=float(v[0]), max=float(v[-1]),
                   percentiles=pct.tolist(), edges=edges.tolist(), hist=hist.tolist(),
                   sample=np.sort(v[take]).tolist())


def histogram(values: np.ndarray, edges, *, sorted_values: bool = False) -> np.ndarray:
    """Counts of ``values`` in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)``."""
    edges = np.asarray(edges, dtype=np.float64)
    if sorted_values:
        cum = np.searchsorted(values, edges, side="right")
        return np.diff(np.concatenate([[0], cum, [values.size]]))
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


@dataclasses.dataclass
class CategoricalProfile:
    count: int
    missing: int
    n_distinct: int
    categories: list  # top-k values (strings), most frequent first
    counts: list  # their counts
    other: int  # count of all remaining non-missing values
    kind: str = "categorical"

    @property
    def missing_rate(self) -> float:
        return self.missing / self.count if self.count else 0.0

    @classmethod
    def fit(cls, values, *, top_k: int = 50, name: str = "column") -> "CategoricalProfile":
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        present, miss = as_categories(values)
        if present.size == 0:
            raise ValueError(f"column {name!r}: no non-missing values to profile")
        uniq, cnt = np.unique(present, return_counts=True)
        order = np.lexsort((uniq, -cnt))[:top_k]  # most frequent first, ties by value
        return cls(count=int(miss.size), missing=int(miss.sum()), n_distinct=int(uniq.size),
                   categories=uniq[order].tolist(), counts=cnt[order].astype(int).tolist(),
                   other=int(present.size - cnt[order].sum()))


_KINDS = {"numeric": NumericProfile, "categorical": CategoricalProfile}


@dataclasses.dataclass
class Profile:
    """Per-column reference summaries (see the module docstring)."""

    columns: dict  # name -> NumericProfile | CategoricalProfile
    seed: int = 0
    sample_size: int = 2000
    top_k: int = 50
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def fit(cls, columns: Mapping[str, np.ndarray], kinds: Mapping[str, str] | None = None, *,
            sample_size: int = 2000, top_k: int = 50, max_int_levels: int = 20,
            seed: int = 0) -> "Profile":
        """Profiles every column of ``columns``; ``kinds`` overrides the inferred kind of a column."""
        if not columns:
            raise ValueError("columns is empty: nothing to profile")
        kinds = dict(kinds or {})
        unknown = sorted(set(kinds) - set(columns))
        if unknown:
            raise KeyError(f"kinds names columns {unknown} that are not in columns {sorted(columns)}")
        sizes = {k: len(v) for k, v in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"columns have different lengths: {sizes}")
        out = {}
        for i, (name, values) in enumerate(columns.items()):
            kind = kinds.get(name) or infer_kind(values, max_int_levels)
            if kind not in _KINDS:
                raise ValueError(f"kinds[{name!r}] must be 'numeric' or 'categorical', got {kind!r}")
            if kind == "numeric":
                rng = np.random.default_rng([seed, i])
                out[name] = NumericProfile.fit(values, sample_size=sample_size, rng=rng, name=name)
            else:
                out[name] = CategoricalProfile.fit(values, top_k=top_k, name=name)
        return cls(columns=out, seed=seed, sample_size=sample_size, top_k=top_k)

    def kinds(self) -> dict:
        return {k: v.kind for k, v in self.columns.items()}

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "seed": self.seed,
                "sample_size": self.sample_size, "top_k": self.top_k,
                "columns": {k: dataclasses.asdict(v) for k, v in self.columns.items()}}

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Profile":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"profile schema_version {version!r} is not supported; expected {SCHEMA_VERSION}")
        cols = {}
        for name, c in d["columns"].items():
            kind = c.get("kind")
            if kind not in _KINDS:
                raise ValueError(f"profile column {name!r}: kind must be 'numeric' or 'categorical', got {kind!r}")
            cols[name] = _KINDS[kind](**c)
        return cls(columns=cols, seed=d["seed"], sample_size=d["sample_size"], top_k=d["top_k"],
                   schema_version=version)

    @classmethod
    def from_json(cls, text: str) -> "Profile":
        return cls.from_dict(json.loads(text))
