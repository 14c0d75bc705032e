"""Drift tests of a window of rows against a reference :class:`~mlsd_jax.monitoring.profile.Profile`.

Univariate, chosen by the column's kind (all vectorised numpy; the windows are arrays):

* **numeric**: the two-sample Kolmogorov-Smirnov test between the profile's reference sample
  (at most ``sample_size`` values) and every non-missing value of the window: the statistic
  exactly as ``scipy.stats.ks_2samp`` computes it, the p-value from Smirnov's asymptotic
  distribution as ``ks_2samp(..., method="asymp")`` does (``scipy.stats.kstwo`` with
  ``n = round(n1 * n2 / (n1 + n2))``); the 1-Wasserstein distance between the same two samples
  (``scipy.stats.wasserstein_distance``), reported raw and **normalised by the reference's
  standard deviation** (ddof 0, over all reference rows); and PSI over the profile's
  quantile-edged histogram bins;
* **categorical**: a chi-squared test of homogeneity on the 2 x K table of reference and window
  counts over the profile's categories plus one ``other`` bucket (no continuity correction; the
  statistic and p-value of ``scipy.stats.chi2_contingency(table, correction=False)``; columns
  that are empty in both rows are dropped).  Window values outside the profile's categories
  count in ``other`` and are also reported separately (``unseen_count``: exact when the profile
  lists every reference category, else None; ``unseen_values``: the 10 most frequent window
  values outside the profile's categories, with counts);
  the Jensen-Shannon distance (base 2, so in [0, 1]; ``scipy.spatial.distance.jensenshannon``)
  and PSI of the two distributions over the same buckets.

PSI is ``sum((q - p) * ln(q / p))`` with each share floored at :data:`PSI_EPS` (1e-4) first.
The p-values are adjusted across the checked columns (``correction="bh"``: Benjamini-Hochberg,
``"bonferroni"``, or ``"none"``) and a column is flagged (``drift``) when its adjusted p-value
is below ``alpha``; a window column with no present values is not tested.  Missingness is a
separate family: per column the same chi-squared test on the 2 x 2 table of (missing, present)
counts, adjusted the same way across columns (``missing_p_value``, ``missing_drift``).

Multivariate: :class:`PCAReconstruction`, NannyML's data-reconstruction check: numeric columns
standardised and the frequent categories of categorical columns (reference share >= 1%, at most
20, plus one column for the rest) one-hot encoded and standardised on the reference, missing values imputed (numeric: reference mean; categorical:
the most frequent category), PCA keeping the fewest components that explain ``variance``
(default 65%) of the reference's variance, and per chunk the mean over rows of the Euclidean
norm of (row - its reconstruction).  The thresholds are the mean +/- 3 std (ddof 0) of the
reference's own chunk errors.

The reference distributions used for p-values need scipy (a dependency of jax).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from mlsd_jax.monitoring.profile import CategoricalProfile, NumericProfile, Profile, as_categories, histogram

__all__ = ["PSI_EPS", "ks_2samp", "wasserstein", "chi2_homogeneity", "js_distance", "psi",
           "adjust_pvalues", "check_numeric", "check_categorical", "DriftReport", "check",
           "PCAReconstruction"]

PSI_EPS = 1e-4
CORRECTIONS = ("bh", "bonferroni", "none")


# ----------------------------------------------------------------------------- statistics
def _clean(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ValueError(f"{name}: no non-missing values")
    return x


def ks_2samp(a, b, *, assume_sorted: bool = False) -> tuple[float, float]:
    """Two-sided two-sample KS: ``(statistic, asymptotic p-value)`` (NaNs dropped)."""
    from scipy.stats import kstwo

    a = _clean(a, "ks_2samp: first sample")
    b = _clean(b, "ks_2samp: second sample")
    if not assume_sorted:
        a, b = np.sort(a), np.sort(b)
    n1, n2 = a.size, b.size
    # The ECDF gap is largest at a data point; evaluate both ECDFs at every point of both samples.
    pts = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, pts, side="right") / n1
                            - np.searchsorted(b, pts, side="right") / n2)))
    en = n1 * n2 / (n1 + n2)
    p = float(np.clip(kstwo.sf(d, np.round(en)), 0.0, 1.0))
    return d, p


def wasserstein(a, b, *, assume_sorted: bool = False) -> float:
    """1-Wasserstein distance between two samples: the integral of ``|F_a - F_b|``."""
    a = _clean(a, "wasserstein: first sample")
    b = _clean(b, "wasserstein: second sample")
    if not assume_sorted:
        a, b = np.sort(a), np.sort(b)
    allv = np.sort(np.concatenate([a, b]))
    deltas = np.diff(allv)
    fa = np.searchsorted(a, allv[:-1], side="right") / a.size
    fb = np.searchsorted(b, allv[:-1], side="right") / b.size
    return float(np.sum(np.abs(fa - fb) * deltas))


def chi2_homogeneity(ref_counts, cur_counts) -> tuple[float, int, float]:
    """Chi-squared test of homogeneity on the 2 x K table: ``(statistic, dof, p-value)``."""
    from scipy.stats import chi2

    table = np.stack([np.asarray(ref_counts, np.float64), np.asarray(cur_counts, np.float64)])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return 0.0, 0, 1.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return stat, dof, float(chi2.sf(stat, dof))


def _shares(counts) -> np.ndarray:
    c = np.asarray(counts, np.float64)
    s = c.sum()
    return c / s if s > 0 else np.full(c.shape, 1.0 / max(c.size, 1))


def js_distance(p, q) -> float:
    """Jensen-Shannon distance (base 2) between two count or probability vectors."""
    p, q = _shares(p), _shares(q)
    m = 0.5 * (p + q)

    def kl(x):
        nz = x > 0
        return np.sum(x[nz] * np.log2(x[nz] / m[nz]))

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


def psi(ref, cur, eps: float = PSI_EPS) -> float:
    """Population stability index of ``cur`` against ``ref`` (counts or shares per bucket)."""
    p = np.maximum(_shares(ref), eps)
    q = np.maximum(_shares(cur), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def adjust_pvalues(p, method: str = "bh") -> np.ndarray:
    """Multiple-testing adjusted p-values: Benjamini-Hochberg (``"bh"``), ``"bonferroni"`` or ``"none"``."""
    p = np.asarray(p, np.float64)
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    m = p.size
    if m == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * m, 1.0)
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adj, 1.0)
    return out


# ----------------------------------------------------------------------------- per column
def check_numeric(prof: NumericProfile, values, name: str = "column") -> dict:
    """The numeric tests of one window column against its profile (see the module docstring)."""
    x = np.asarray(values)
    if x.dtype.kind not in "iufb":
        raise TypeError(f"column {name!r}: the profile is numeric but the window has dtype {x.dtype}")
    x = x.astype(np.float64, copy=False).ravel()
    miss = np.isnan(x)
    v = np.sort(x[~miss])
    out = {"kind": "numeric", "n": int(x.size), "n_missing": int(miss.sum()), "missing_rate": float(miss.mean()) if x.size else 0.0,
           "ref_missing_rate": prof.missing_rate}
    if v.size == 0:
        return {**out, "ks_statistic": None, "p_value": None, "wasserstein": None,
                "wasserstein_norm": None, "psi": None, "mean": None, "ref_mean": prof.mean}
    ref = np.asarray(prof.sample, np.float64)
    d, p = ks_2samp(ref, v, assume_sorted=True)
    w = wasserstein(ref, v, assume_sorted=True)
    scale = prof.std if prof.std > 0 else 1.0
    return {**out, "ks_statistic": d, "p_value": p, "wasserstein": w, "wasserstein_norm": w / scale,
            "psi": psi(prof.hist, histogram(v, prof.edges, sorted_values=True)),
            "mean": float(v.mean()), "ref_mean": prof.mean}


def category_counts(prof: CategoricalProfile, values, name: str = "column", max_unseen: int = 10):
    """Window counts over ``prof.categories + [other]``, the missing mask and the unseen values."""
    present, miss = as_categories(values)
    cats = np.asarray(prof.categories, dtype=str)
    order = np.argsort(cats)
    scats = cats[order]
    pos = np.clip(np.searchsorted(scats, present), 0, max(scats.size - 1, 0))
    known = scats[pos] == present if scats.size else np.zeros(present.size, bool)
    counts = np.bincount(order[pos[known]], minlength=cats.size)
    unseen = present[~known]
    uniq, cnt = (np.unique(unseen, return_counts=True) if unseen.size
                 else (np.array([], str), np.array([], int)))
    top = np.lexsort((uniq, -cnt))[:max_unseen]
    unseen_values = {str(uniq[i]): int(cnt[i]) for i in top}
    return np.append(counts, unseen.size), miss, unseen_values


def check_categorical(prof: CategoricalProfile, values, name: str = "column") -> dict:
    """The categorical tests of one window column against its profile (see the module docstring)."""
    cur, miss, unseen_values = category_counts(prof, values, name)
    ref = np.append(np.asarray(prof.counts, np.int64), prof.other)
    out = {"kind": "categorical", "n": int(miss.size), "n_missing": int(miss.sum()),
           "missing_rate": float(miss.mean()) if miss.size else 0.0,
           "ref_missing_rate": prof.missing_rate, "other_count": int(cur[-1]),
           # Exact only when the profile lists every reference category (its ``other`` is empty);
           # otherwise values outside the top-k may be reference tail values.
           "unseen_count": int(cur[-1]) if prof.other == 0 else None,
           "unseen_values": unseen_values}
    if cur.sum() == 0:
        return {**out, "chi2": None, "dof": None, "p_value": None, "js_distance": None, "psi": None}
    stat, dof, p = chi2_homogeneity(ref, cur)
    return {**out, "chi2": stat, "dof": dof, "p_value": p, "js_distance": js_distance(ref, cur),
            "psi": psi(ref, cur)}


# ----------------------------------------------------------------------------- report
@dataclasses.dataclass
class DriftReport:
    """Per-column results (``columns[name]``: statistics, ``p_value``, ``p_adjusted``, ``drift``)."""

    columns: dict
    alpha: float
    correction: str

    @property
    def drifted(self) -> list:
        """Columns whose distribution of present values drifted."""
        return [k for k, v in self.columns.items() if v.get("drift")]

    @property
    def missing_drifted(self) -> list:
        """Columns whose missing rate changed."""
        return [k for k, v in self.columns.items() if v.get("missing_drift")]

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "correction": self.correction, "drifted": self.drifted,
                "missing_drifted": self.missing_drifted, "columns": self.columns}


def check(profile: Profile, columns: Mapping[str, np.ndarray], *, alpha: float = 0.05,
          correction: str = "bh", names: Sequence[str] | None = None) -> DriftReport:
    """Tests each profiled column (or ``names``) of a window; p-values adjusted across them."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    names = list(names) if names is not None else list(profile.columns)
    unknown = [n for n in names if n not in profile.columns]
    if unknown:
        raise KeyError(f"columns {unknown} are not in the profile (it has {sorted(profile.columns)})")
    absent = [n for n in names if n not in columns]
    if absent:
        raise KeyError(f"the window lacks profiled columns {absent} (it has {sorted(columns)})")
    res = {}
    for n in names:
        prof = profile.columns[n]
        fn = check_numeric if prof.kind == "numeric" else check_categorical
        res[n] = fn(prof, columns[n], n)
    for n in names:  # missingness: 2 x 2 table of (missing, present) counts, reference vs window
        prof, r = profile.columns[n], res[n]
        r["missing_p_value"] = chi2_homogeneity([prof.missing, prof.count - prof.missing],
                                                [r["n_missing"], r["n"] - r["n_missing"]])[2]
    madj = adjust_pvalues([res[n]["missing_p_value"] for n in names], correction)
    for n, a in zip(names, madj):
        res[n]["missing_p_adjusted"] = float(a)
        res[n]["missing_drift"] = bool(a < alpha)
    tested = [n for n in names if res[n]["p_value"] is not None]
    adj = adjust_pvalues([res[n]["p_value"] for n in tested], correction)
    for n in names:
        res[n]["p_adjusted"] = None
        res[n]["drift"] = False
    for n, a in zip(tested, adj):
        res[n]["p_adjusted"] = float(a)
        res[n]["drift"] = bool(a < alpha)
    return DriftReport(columns=res, alpha=alpha, correction=correction)


# ----------------------------------------------------------------------------- multivariate
@dataclasses.dataclass
class PCAReconstruction:
    """NannyML-style data-reconstruction drift check (see the module docstring)."""

    numeric: list
    categorical: list
    num_mean: list
    num_std: list
    cat_levels: list  # per categorical column: its one-hot categories (strings)
    cat_fill: list  # per categorical column: the imputed (most frequent) category
    onehot_mean: list  # reference share of each one-hot column
    components: list  # (k, d) principal axes (rows)
    center: list  # (d,) mean of the encoded reference (about 0)
    variance: float
    chunk_size: int
    ref_mean: float
    ref_std: float
    n_sigma: float = 3.0

    @property
    def lower(self) -> float:
        return self.ref_mean - self.n_sigma * self.ref_std

    @property
    def upper(self) -> float:
        return self.ref_mean + self.n_sigma * self.ref_std

    @classmethod
    def fit(cls, columns: Mapping[str, np.ndarray], numeric: Sequence[str], categorical: Sequence[str] = (),
            *, variance: float = 0.65, chunk_size: int = 5000, min_share: float = 0.01,
            max_levels: int = 20, n_sigma: float = 3.0) -> "PCAReconstruction":
        """Fits the encoder and PCA on reference ``columns``; thresholds from its chunks of ``chunk_size``."""
        if not 0 < variance <= 1:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
        numeric, categorical = list(numeric), list(categorical)
        if not numeric and not categorical:
            raise ValueError("PCAReconstruction needs at least one numeric or categorical column")
        absent = [c for c in numeric + categorical if c not in columns]
        if absent:
            raise KeyError(f"reference lacks columns {absent}")
        n = len(columns[(numeric + categorical)[0]])
        if n < 2 * chunk_size:
            raise ValueError(f"reference has {n} rows; at least 2 chunks of chunk_size={chunk_size} are needed")
        mean, std = [], []
        for c in numeric:
            x = np.asarray(columns[c], np.float64)
            mean.append(float(np.nanmean(x)))
            s = float(np.nanstd(x))
            std.append(s if s > 0 else 1.0)
        levels, fill, shares = [], [], []
        for c in categorical:
            present, _ = as_categories(columns[c])
            uniq, cnt = np.unique(present, return_counts=True)
            order = np.lexsort((uniq, -cnt))
            fill.append(str(uniq[order[0]]))
            keep = [i for i in order[:max_levels] if cnt[i] >= min_share * present.size]
            levels.append([str(uniq[i]) for i in keep])
        self = cls(numeric=numeric, categorical=categorical, num_mean=mean, num_std=std,
                   cat_levels=levels, cat_fill=fill, onehot_mean=[], components=[], center=[],
                   variance=variance, chunk_size=chunk_size, ref_mean=0.0, ref_std=0.0, n_sigma=n_sigma)
        # One-hot shares on the reference (after imputation), then the covariance of the
        # standardised design matrix, both accumulated over row blocks (memory stays bounded).
        blocks = [(lo, min(n, lo + 50_000)) for lo in range(0, n, 50_000)]
        self.onehot_mean = (sum(self._onehot_raw(columns, lo, hi).sum(0) for lo, hi in blocks) / n).tolist()
        total, gram = 0.0, 0.0
        for lo, hi in blocks:
            z = self._encode(columns, lo, hi)
            total = total + z.sum(0)
            gram = gram + z.T @ z
        center = total / n
        cov = gram / n - np.outer(center, center)
        evals, evecs = np.linalg.eigh(cov)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        ratio = np.cumsum(evals) / evals.sum()
        k = int(np.searchsorted(ratio, variance - 1e-12) + 1)
        self.components = evecs[:, :k].T.tolist()
        self.center = center.tolist()
        errs = self.chunk_errors(columns)
        self.ref_mean, self.ref_std = float(errs.mean()), float(errs.std())
        return self

    # -- encoding
    def _onehot_raw(self, columns, lo, hi) -> np.ndarray:
        blocks = []
        for c, lev, fill in zip(self.categorical, self.cat_levels, self.cat_fill):
            present, miss = as_categories(np.asarray(columns[c])[lo:hi])
            if miss.any():  # impute the most frequent reference category
                vals = np.empty(miss.size, dtype=np.result_type(present.dtype, np.asarray([fill]).dtype))
                vals[miss] = fill
                vals[~miss] = present
            else:
                vals = present
            lev_arr = np.asarray(lev, dtype=str)
            order = np.argsort(lev_arr)
            slev = lev_arr[order]
            m = np.zeros((vals.size, len(lev) + 1))
            if slev.size:
                pos = np.clip(np.searchsorted(slev, vals), 0, slev.size - 1)
                hit = slev[pos] == vals
                col = np.where(hit, order[pos], len(lev))
            else:
                col = np.full(vals.size, 0)
            m[np.arange(vals.size), col] = 1.0
            blocks.append(m)
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((hi - lo, 0))

    def _encode(self, columns, lo, hi) -> np.ndarray:
        parts = []
        if self.numeric:
            x = np.stack([np.asarray(columns[c], np.float64)[lo:hi] for c in self.numeric], axis=1)
            mean, std = np.asarray(self.num_mean), np.asarray(self.num_std)
            x = np.where(np.isnan(x), mean, x)
            parts.append((x - mean) / std)
        if self.categorical:
            raw = self._onehot_raw(columns, lo, hi)
            p = np.asarray(self.onehot_mean)
            s = np.sqrt(p * (1 - p))
            s = np.where(s > 0, s, 1.0)
            parts.append((raw - p) / s)
        return np.concatenate(parts, axis=1)

    def row_errors(self, columns: Mapping[str, np.ndarray], block: int = 50_000) -> np.ndarray:
        """Per-row reconstruction error (Euclidean, in the standardised space)."""
        absent = [c for c in self.numeric + self.categorical if c not in columns]
        if absent:
            raise KeyError(f"the window lacks columns {absent} used by the PCA check")
        n = len(columns[(self.numeric + self.categorical)[0]])
        v = np.asarray(self.components)
        center = np.asarray(self.center)
        out = np.empty(n)
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            z = self._encode(columns, lo, hi) - center
            r = z - (z @ v.T) @ v
            out[lo:hi] = np.sqrt(np.einsum("ij,ij->i", r, r))
        return out

    def chunk_errors(self, columns: Mapping[str, np.ndarray], chunk_size: int | None = None) -> np.ndarray:
        """Mean reconstruction error of each consecutive chunk (a last partial chunk is kept
        when it has at least half of ``chunk_size`` rows)."""
        cs = chunk_size or self.chunk_size
        e = self.row_errors(columns)
        starts = np.arange(0, e.size, cs)
        sums = np.add.reduceat(e, starts) if e.size else np.array([])
        sizes = np.diff(np.append(starts, e.size))
        keep = sizes >= max(1, cs // 2)
        return sums[keep] / sizes[keep]

    def check(self, columns: Mapping[str, np.ndarray]) -> dict:
        """Reconstruction error of one window (all its rows) and whether it leaves the band."""
        err = float(self.row_errors(columns).mean())
        return {"error": err, "lower": self.lower, "upper": self.upper,
                "drift": bool(err > self.upper or err < self.lower),
                "n_components": len(self.components)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "PCAReconstruction":
        return cls(**d)
