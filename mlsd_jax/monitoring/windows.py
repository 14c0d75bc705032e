"""Windowed monitoring over the prediction log: drift, serving health and quality per window.

Three steps, each usable on its own:

* :func:`records_frame` turns prediction-log records (:func:`mlsd_jax.serving.predlog.read_records`)
  into a :class:`Frame`: one entry per **request** (``ts``, ``request_id``, ``model``, ``version``,
  ``code``, ``latency_ms``, ``fallback``, ``n_rows``) and one per **row** of the successful
  requests (``code == 200``).  A request may carry a batch: the first dimension of each input and
  output tensor is the row.  A tensor of shape ``(n,)`` or ``(n, 1)`` becomes one column named
  after it; ``(n, k)`` becomes ``k`` columns ``name[0]`` .. ``name[k-1]``; a 0-d (scalar) tensor
  is repeated over the request's rows; deeper tensors are kept as one column of nested lists.
  Strings stay strings (bytes were logged as UTF-8 text or ``{"b64": ...}``; the latter is kept
  as its base64 text); a null among numbers (how the log writes NaN) is NaN.  An output whose name is also an input's is renamed ``<name>_output``.
  Rows of failed requests (``code != 200``) are not rows: they count for the error rate only.
  Records are ordered by time (stable), so the rows of several worker files interleave.
  :func:`frame_from_columns` builds a frame from column arrays directly (one row per request).
  Derived columns (:func:`derive_columns`, applied by :func:`monitor` and by ``records_frame``
  given the profile): where the reference profile holds ``<name>.length`` (free text) or
  ``<name>.items`` (padded string lists; see :func:`mlsd_jax.experiment.save_reference_profile`),
  the frame gains that input column computed the same way from the logged strings: characters
  per value of a string input ``name`` (:func:`text_lengths`), or non-empty items per row of a
  logged list ``name[0]`` .. ``name[k-1]`` (:func:`list_lengths`).
* :func:`windows` cuts a frame ``by="count"`` (consecutive runs of ``size`` rows, as NannyML's
  chunks; the last one may be shorter) or ``by="time"`` (``size`` seconds from ``origin``, default
  the first request's time; windows with no requests are kept, with zero rows).  By time, a
  request and its rows belong to the window its timestamp falls in.  By count, a request
  belongs to the window of its first row (a batch request cut by a boundary has rows in both),
  a failed request to the window of the last request before it that had rows; a count window
  starts at the time of its first request and ends where the next one starts.
* :func:`monitor` computes one record per window (:class:`MonitorResult`):

  - ``n_rows``, ``n_requests``, ``n_failed``, ``duration_s`` (``end - start``),
    ``throughput`` (``rows_per_s`` and ``requests_per_s`` over ``duration_s``; null when 0);
  - ``latency`` (milliseconds, over every request of the window, failed ones included):
    ``p50`` / ``p95`` / ``p99`` (numpy's linear percentiles) and ``mean``;
  - ``error_rate`` (share of requests with ``code != 200``) and ``fallback_rate`` (share of
    requests answered by a fallback);
  - ``drift``: :func:`mlsd_jax.monitoring.drift.check` of the window's feature columns (the
    profile's columns that are logged inputs, or ``features``) against the profile:
    ``n_drifted``, ``drifted``, ``n_tested``, ``missing_drifted``; and ``features[name]``: the
    column's results (``statistic`` = KS statistic or chi-squared, ``p_value``, ``p_adjusted``,
    ``drift``, PSI, ...);
  - ``prediction``: the same test of the prediction column against the profile's column
    ``profile_prediction`` (default: the same name, when the profile has it), on its own (not
    adjusted with the features);
  - ``pca``: :meth:`mlsd_jax.monitoring.drift.PCAReconstruction.check` when ``pca`` is given;
  - ``quality``: with ``labels`` (joined by :func:`join_labels`), the realised metrics over the
    labelled rows of the window, ``n_labelled`` and ``labelled_fraction``; with a fitted
    :class:`mlsd_jax.monitoring.estimate.CBPE` as ``estimator``, the estimated metrics and their
    bands from the window's scores (no labels needed).  ``quality.metric`` names the headline
    metric (``metric``); rows whose score is null are left out (``quality.n_unscored``; ``n``,
    ``n_labelled`` and ``labelled_fraction`` count the scored rows); realised and estimated
    values sit under ``quality.realised.<name>`` and
    ``quality.estimated.<name>`` (``roc_auc``, ``accuracy``, ``precision``, ``recall``,
    ``specificity``, ``f1``), bands under ``quality.estimated_lower`` / ``quality.estimated_upper``.

  :meth:`MonitorResult.to_dict` is JSON-serialisable (numbers as floats / ints, NaN and
  infinities as null).  Windows with fewer than ``min_rows`` rows get null drift and quality.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mlsd_jax.monitoring.drift import PCAReconstruction, check
from mlsd_jax.monitoring.estimate import CBPE, METRICS, metric_name, realised_metrics
from mlsd_jax.monitoring.profile import Profile

__all__ = ["Frame", "Window", "MonitorResult", "records_frame", "frame_from_columns", "windows",
           "join_labels", "monitor", "jsonsafe", "lookup"]

_ROW_KEYS = ("ts", "request_id", "row")


# ----------------------------------------------------------------------------- frame
@dataclasses.dataclass
class Frame:
    """Requests and rows of a prediction log, both ordered by request time.

    ``requests``: columns ``ts``, ``request_id``, ``model``, ``version``, ``code``,
    ``latency_ms``, ``fallback`` (None when the model answered), ``n_rows`` (0 for failed
    requests).  ``rows``: ``ts``, ``request_id``, ``row`` (index within its request) and one
    column per flattened input / output (names in ``inputs`` / ``outputs``).
    """

    requests: dict
    rows: dict
    inputs: list
    outputs: list

    @property
    def n_requests(self) -> int:
        return int(len(self.requests["ts"]))

    @property
    def n_rows(self) -> int:
        return int(len(self.rows["ts"]))

    def row_columns(self, rows: slice | np.ndarray, names: Sequence[str] | None = None) -> dict:
        """``{name: values}`` of the selected rows (all row columns, or ``names``)."""
        names = list(self.rows) if names is None else list(names)
        absent = [n for n in names if n not in self.rows]
        if absent:
            raise KeyError(f"the frame has no row columns {absent} (it has {sorted(self.rows)})")
        return {n: self.rows[n][rows] for n in names}


def _tensor(v: Any) -> np.ndarray:
    """A logged JSON tensor as a numpy array (strings as object arrays)."""
    if isinstance(v, dict) and set(v) == {"b64"}:
        return np.asarray(v["b64"], dtype=object)
    if isinstance(v, list) and _has_b64(v):
        v = _unwrap_b64(v)
    a = np.asarray(v) if not isinstance(v, np.ndarray) else v
    if a.dtype.kind in "US":
        a = a.astype(object)
    elif a.dtype == object and a.size:
        # Numbers with nulls (non-finite floats are logged as null): floats with NaN.
        flat = a.ravel()
        if all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in flat):
            a = np.array([np.nan if x is None else x for x in flat], np.float64).reshape(a.shape)
    return a


def _has_b64(v) -> bool:
    while isinstance(v, list) and v:
        if any(isinstance(x, dict) for x in v):
            return True
        v = v[0]
    return False


def _unwrap_b64(v):
    if isinstance(v, list):
        return [_unwrap_b64(x) for x in v]
    return v["b64"] if isinstance(v, dict) and "b64" in v else v


def _flatten(tensors: Mapping[str, Any], request_id: str, what: str) -> tuple[int, dict]:
    """``(n_rows, {column: per-row values})`` of one request's tensors (module docstring)."""
    arrays = {k: _tensor(v) for k, v in tensors.items()}
    dims = {k: a.shape[0] for k, a in arrays.items() if a.ndim >= 1}
    n = max(dims.values()) if dims else 1
    bad = {k: d for k, d in dims.items() if d != n}
    if bad:
        raise ValueError(f"request {request_id!r}: {what} tensors disagree on the row count "
                         f"(first dimensions {dims})")
    out = {}
    for k, a in arrays.items():
        if a.ndim == 0:
            out[k] = np.full(n, a.item(), dtype=a.dtype if a.dtype != object else object)
        elif a.ndim == 1:
            out[k] = a
        elif a.ndim == 2 and a.shape[1] == 1:
            out[k] = a[:, 0]
        elif a.ndim == 2:
            for j in range(a.shape[1]):
                out[f"{k}[{j}]"] = a[:, j]
        else:
            col = np.empty(n, dtype=object)
            for i in range(n):
                col[i] = a[i].tolist()
            out[k] = col
    return n, out


def _assemble(parts: list[tuple[int, int, np.ndarray]], total: int) -> np.ndarray:
    """One column from ``(offset, length, values)`` pieces; rows no piece covers are missing."""
    covered = sum(p[1] for p in parts)
    kinds = {p[2].dtype.kind for p in parts}
    if kinds <= set("iub") and covered == total and len(kinds) == 1:
        return np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    if kinds <= set("iufb"):
        out = np.full(total, np.nan)
        for off, n, v in parts:
            out[off:off + n] = v
        return out
    out = np.full(total, None, dtype=object)
    for off, n, v in parts:
        out[off:off + n] = v
    return out


def records_frame(records: Sequence[Mapping[str, Any]],
                  profile: Profile | None = None) -> Frame:
    """A :class:`Frame` from prediction-log records (see the module docstring); with
    ``profile``, plus the derived ``<name>.length`` / ``<name>.items`` columns it holds
    (:func:`derive_columns`)."""
    recs = sorted(records, key=lambda r: r["ts"])  # stable: ties keep file / id order
    req = {k: [] for k in ("ts", "request_id", "model", "version", "code", "latency_ms",
                           "fallback", "n_rows")}
    parts_in: dict[str, list] = {}
    parts_out: dict[str, list] = {}
    row_ts, row_rid, row_idx = [], [], []
    total = 0
    for r in recs:
        for key in ("ts", "request_id", "code"):
            if key not in r:
                raise KeyError(f"a prediction-log record lacks {key!r} (it has {sorted(r)})")
        rid = str(r["request_id"])
        code = int(r["code"])
        n = 0
        if code == 200:
            inputs = _loads(r.get("inputs"), rid, "inputs")
            outputs = _loads(r.get("outputs"), rid, "outputs")
            n_in, cols_in = _flatten(inputs, rid, "input") if inputs else (0, {})
            n_out, cols_out = _flatten(outputs, rid, "output") if outputs else (0, {})
            if inputs and outputs and n_in != n_out:
                raise ValueError(f"request {rid!r}: {n_in} input rows but {n_out} output rows")
            n = max(n_in, n_out)
            for k, v in cols_in.items():
                parts_in.setdefault(k, []).append((total, n, v))
            for k, v in cols_out.items():
                parts_out.setdefault(k, []).append((total, n, v))
            row_ts.append(np.full(n, float(r["ts"])))
            row_rid.append(np.full(n, rid, dtype=object))
            row_idx.append(np.arange(n))
            total += n
        req["ts"].append(float(r["ts"]))
        req["request_id"].append(rid)
        req["model"].append(r.get("model"))
        req["version"].append(r.get("version"))
        req["code"].append(code)
        lat = r.get("latency_ms")
        req["latency_ms"].append(float(lat) if lat is not None else math.nan)
        req["fallback"].append(r.get("fallback"))
        req["n_rows"].append(n)
    requests = {"ts": np.asarray(req["ts"], np.float64),
                "request_id": np.asarray(req["request_id"], dtype=object),
                "model": np.asarray(req["model"], dtype=object),
                "version": np.asarray(req["version"], dtype=object),
                "code": np.asarray(req["code"], np.int64),
                "latency_ms": np.asarray(req["latency_ms"], np.float64),
                "fallback": np.asarray(req["fallback"], dtype=object),
                "n_rows": np.asarray(req["n_rows"], np.int64)}
    rows = {"ts": np.concatenate(row_ts) if row_ts else np.zeros(0),
            "request_id": np.concatenate(row_rid) if row_rid else np.zeros(0, dtype=object),
            "row": np.concatenate(row_idx) if row_idx else np.zeros(0, np.int64)}
    inputs = []
    for k, parts in parts_in.items():
        if k in _ROW_KEYS:
            raise ValueError(f"input tensor name {k!r} clashes with a reserved row column {_ROW_KEYS}")
        rows[k] = _assemble(parts, total)
        inputs.append(k)
    outputs = []
    for k, parts in parts_out.items():
        name = f"{k}_output" if k in rows else k
        rows[name] = _assemble(parts, total)
        outputs.append(name)
    frame = Frame(requests=requests, rows=rows, inputs=inputs, outputs=outputs)
    return derive_columns(frame, profile) if profile is not None else frame


LENGTH_SUFFIX = ".length"
ITEMS_SUFFIX = ".items"


def text_lengths(values) -> np.ndarray:
    """Characters per string (float; NaN where the value is missing: None, NaN, not a string)."""
    v = np.asarray(values, dtype=object).ravel()
    return np.asarray([float(len(x)) if isinstance(x, (str, bytes)) else np.nan for x in v],
                      np.float64)


def list_lengths(values) -> np.ndarray:
    """Non-empty strings per row of a ``[rows, width]`` list padded with ``""`` (None and
    other non-strings count as padding)."""
    v = np.asarray(values, dtype=object)
    if v.ndim < 2:
        raise ValueError(f"expected a [rows, width] list, got shape {v.shape}")
    filled = np.frompyfunc(lambda x: isinstance(x, (str, bytes)) and len(x) > 0, 1, 1)(v)
    return np.asarray(filled, dtype=bool).sum(axis=tuple(range(1, v.ndim))).astype(np.float64)


def derive_columns(frame: Frame, profile: Profile) -> Frame:
    """``frame`` plus the derived input columns that ``profile`` holds and the frame lacks,
    computed as the reference profile computed them
    (:func:`mlsd_jax.experiment.save_reference_profile`):

    * ``<name>.length``: characters per row of the logged string input ``name`` (missing stays
      missing);
    * ``<name>.items``: non-empty items per row of a logged string list, whose rows the frame
      holds as ``name[0]`` .. ``name[k-1]`` (and as ``name`` for requests that sent one item per
      row); ``""`` and the cells a shorter request did not have are padding.

    A column whose source is not logged is not added (so not monitored, unless named in
    ``features``, which then fails naming it). Returns a new frame sharing the other columns."""
    rows, inputs = dict(frame.rows), list(frame.inputs)
    for col in profile.columns:
        if col in rows:
            continue
        if col.endswith(LENGTH_SUFFIX):
            src = col[:-len(LENGTH_SUFFIX)]
            if src not in frame.inputs or np.asarray(rows[src]).dtype.kind not in "OUS":
                continue
            rows[col] = text_lengths(rows[src])
        elif col.endswith(ITEMS_SUFFIX):
            src = col[:-len(ITEMS_SUFFIX)]
            items = [src] if src in frame.inputs else []
            j = 0
            while f"{src}[{j}]" in rows:
                items.append(f"{src}[{j}]")
                j += 1
            if not items:
                continue
            rows[col] = list_lengths(np.stack([np.asarray(rows[c], dtype=object) for c in items],
                                              axis=1))
        else:
            continue
        inputs.append(col)
    if len(inputs) == len(frame.inputs):
        return frame
    return Frame(requests=frame.requests, rows=rows, inputs=inputs, outputs=list(frame.outputs))


def _loads(text, rid: str, what: str) -> dict | None:
    if text is None:
        return None
    if isinstance(text, Mapping):
        return dict(text)
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"request {rid!r}: {what} is not valid JSON ({e})") from None
    if v is not None and not isinstance(v, dict):
        raise ValueError(f"request {rid!r}: {what} must be a JSON object of tensors, got {type(v).__name__}")
    return v


def frame_from_columns(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None,
                       *, ts=None, request_id=None, latency_ms=None) -> Frame:
    """A frame of one-row successful requests from column arrays (no prediction log needed):
    ``ts`` defaults to 0, 1, 2, ... seconds; ``request_id`` to ``"0"``, ``"1"``, ...."""
    outputs = dict(outputs or {})
    cols = {**inputs, **outputs}
    if not cols:
        raise ValueError("frame_from_columns needs at least one column")
    sizes = {k: len(v) for k, v in cols.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"columns have different lengths: {sizes}")
    n = next(iter(sizes.values()))
    ts = np.arange(n, dtype=np.float64) if ts is None else np.asarray(ts, np.float64)
    if ts.shape != (n,):
        raise ValueError(f"ts must have shape ({n},), got {ts.shape}")
    order = np.argsort(ts, kind="stable")
    rid = (np.arange(n).astype(str).astype(object) if request_id is None
           else np.asarray(request_id).astype(str).astype(object))
    lat = np.full(n, np.nan) if latency_ms is None else np.asarray(latency_ms, np.float64)
    requests = {"ts": ts[order], "request_id": rid[order], "model": np.full(n, None, object),
                "version": np.full(n, None, object), "code": np.full(n, 200, np.int64),
                "latency_ms": lat[order], "fallback": np.full(n, None, object),
                "n_rows": np.ones(n, np.int64)}
    rows = {"ts": ts[order], "request_id": rid[order], "row": np.zeros(n, np.int64)}
    clash = [k for k in cols if k in _ROW_KEYS]
    if clash:
        raise ValueError(f"column names {clash} clash with reserved row columns {_ROW_KEYS}")
    for k, v in inputs.items():
        rows[k] = np.asarray(v)[order]
    out_names = []
    for k, v in outputs.items():
        name = f"{k}_output" if k in inputs else k
        rows[name] = np.asarray(v)[order]
        out_names.append(name)
    return Frame(requests=requests, rows=rows, inputs=list(inputs), outputs=out_names)


# ----------------------------------------------------------------------------- windows
@dataclasses.dataclass
class Window:
    """One window: ``[start, end)`` in seconds (``end`` inclusive for the last count window),
    and the slices of the frame's rows and requests it holds."""

    index: int
    start: float
    end: float
    rows: slice
    requests: slice

    @property
    def n_rows(self) -> int:
        return self.rows.stop - self.rows.start

    @property
    def n_requests(self) -> int:
        return self.requests.stop - self.requests.start


def windows(frame: Frame, by: str = "count", size: float = 5000, *, origin: float | None = None) -> list:
    """Cuts ``frame`` into :class:`Window` s (see the module docstring)."""
    if by not in ("count", "time"):
        raise ValueError(f"by must be 'count' or 'time', got {by!r}")
    if not size > 0:
        raise ValueError(f"size must be > 0, got {size}")
    req_ts, row_ts = frame.requests["ts"], frame.rows["ts"]
    if frame.n_requests == 0:
        return []
    out = []
    if by == "count":
        if size != int(size):
            raise ValueError(f"size must be a whole number of rows with by='count', got {size}")
        size = int(size)
        if frame.n_rows == 0:
            return [Window(0, float(req_ts[0]), float(req_ts[-1]), slice(0, 0), slice(0, frame.n_requests))]
        # A request belongs to the window of its first row; one without rows (failed) to the
        # window of the last request before it that had rows.
        n_rows = frame.requests["n_rows"]
        first = np.cumsum(n_rows) - n_rows
        win = np.maximum.accumulate(np.where(n_rows > 0, first // size, 0))
        bounds = list(range(0, frame.n_rows, size))
        spans = [(int(np.searchsorted(win, i, "left")), int(np.searchsorted(win, i, "right")))
                 for i in range(len(bounds))]
        spans[-1] = (spans[-1][0], frame.n_requests)
        starts = [float(req_ts[r0]) if r1 > r0 else float(row_ts[b])
                  for (r0, r1), b in zip(spans, bounds)]
        starts[0] = min(starts[0], float(req_ts[0]))
        for i, b in enumerate(bounds):
            end = float(req_ts[-1]) if i == len(bounds) - 1 else starts[i + 1]
            out.append(Window(i, starts[i], end, slice(b, min(b + size, frame.n_rows)), slice(*spans[i])))
        return out
    t0 = float(req_ts[0]) if origin is None else float(origin)
    if t0 > req_ts[0]:
        raise ValueError(f"origin {t0} is after the first request ({req_ts[0]})")
    n_win = int(math.floor((req_ts[-1] - t0) / size)) + 1
    for i in range(n_win):
        lo, hi = t0 + i * size, t0 + (i + 1) * size
        rs = slice(int(np.searchsorted(req_ts, lo, "left")), int(np.searchsorted(req_ts, hi, "left")))
        ws = slice(int(np.searchsorted(row_ts, lo, "left")), int(np.searchsorted(row_ts, hi, "left")))
        out.append(Window(i, lo, hi, ws, rs))
    return out


# ----------------------------------------------------------------------------- labels
def join_labels(frame: Frame, labels) -> np.ndarray:
    """Per-row labels (float; NaN where no label has arrived) joined by request id and row.

    ``labels`` is a mapping or a 2-column table:

    * ``{request_id: label}`` labels row 0 of the request, ``{request_id: [l0, l1, ...]}`` each
      row of a batch request, ``{(request_id, row): label}`` one row;
    * a sequence of ``(key, label)`` pairs with keys as above, or a dict of columns
      ``{"request_id": [...], "label": [...]}`` with an optional ``"row"`` column (default 0).

    Labels of request ids the frame does not hold are ignored (their rows may be in another
    log); ``None`` / NaN labels count as missing.
    """
    if isinstance(labels, Mapping) and "request_id" in labels and "label" in labels:
        rids = [str(x) for x in labels["request_id"]]
        vals = list(labels["label"])
        rows = list(labels["row"]) if "row" in labels else [0] * len(rids)
        if not len(rids) == len(vals) == len(rows):
            raise ValueError("labels: the 'request_id', 'label' and 'row' columns differ in length")
        pairs = [((r, int(i)), v) for r, i, v in zip(rids, rows, vals)]
    elif isinstance(labels, Mapping):
        pairs = list(labels.items())
    else:
        pairs = []
        for item in labels:
            if not isinstance(item, (tuple, list, np.ndarray)) or len(item) != 2:
                raise ValueError(f"labels: a table row must be (key, label), got {item!r}")
            pairs.append((item[0], item[1]))
    index = {(rid, int(i)): k for k, (rid, i) in
             enumerate(zip(frame.rows["request_id"].tolist(), frame.rows["row"].tolist()))}
    out = np.full(frame.n_rows, np.nan)
    for key, val in pairs:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise ValueError(f"labels: a tuple key must be (request_id, row), got {key!r}")
            targets = [((str(key[0]), int(key[1])), val)]
        elif isinstance(val, (list, tuple, np.ndarray)):
            targets = [((str(key), i), v) for i, v in enumerate(val)]
        else:
            targets = [((str(key), 0), val)]
        for k, v in targets:
            pos = index.get(k)
            if pos is not None and v is not None:
                out[pos] = float(v)
    return out


# ----------------------------------------------------------------------------- monitor
def jsonsafe(x: Any):
    """A JSON-serialisable copy: numpy scalars / arrays as Python values, NaN / inf as None."""
    if isinstance(x, Mapping):
        return {str(k): jsonsafe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonsafe(v) for v in x]
    if isinstance(x, np.ndarray):
        return [jsonsafe(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def lookup(record: Mapping, path: str):
    """The value at a dotted ``path`` of a window record (``"latency.p99"``,
    ``"features.AGEP.p_adjusted"``; list items by index); None when any part is absent."""
    cur: Any = record
    for part in path.split("."):
        if isinstance(cur, Mapping):
            if part not in cur:
                return None
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit():
            i = int(part)
            if not -len(cur) <= i < len(cur):
                return None
            cur = cur[i]
        else:
            return None
    return cur


@dataclasses.dataclass
class MonitorResult:
    """One record per window (``windows``) and the settings that produced them (``config``)."""

    windows: list
    config: dict

    def __len__(self) -> int:
        return len(self.windows)

    def series(self, path: str) -> list:
        """The value at the dotted ``path`` in each window (None where absent)."""
        return [lookup(w, path) for w in self.windows]

    def to_dict(self) -> dict:
        return jsonsafe({"config": self.config, "windows": self.windows})

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kw)


def _percentiles(x: np.ndarray) -> dict:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = np.percentile(x, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(x.mean())}


def _drift_summary(col: dict) -> dict:
    stat = col.get("ks_statistic") if col["kind"] == "numeric" else col.get("chi2")
    return {"statistic": stat, **col}


def monitor(frame: Frame, profile: Profile, *, by: str = "count", size: float = 5000,
            alpha: float = 0.05, correction: str = "bh", features: Sequence[str] | None = None,
            prediction: str | None = "prob", profile_prediction: str | None = None,
            predicted: str | None = None, threshold: float | None = None,
            labels=None, metric: str | Callable = "roc_auc", estimator: CBPE | None = None,
            pca: PCAReconstruction | None = None, min_rows: int = 1,
            origin: float | None = None) -> MonitorResult:
    """Monitors ``frame`` window by window against ``profile`` (see the module docstring).

    ``prediction``: the row column holding the model's score (a probability for the quality
    metrics; None: no prediction shift or quality).  ``predicted``: a column of predicted
    classes; otherwise ``score >= threshold`` (``threshold`` defaults to the estimator's, else
    0.5).  ``metric``: the headline quality metric, a name from
    :data:`mlsd_jax.monitoring.estimate.METRICS` (``"auc"`` is ``"roc_auc"``) or a callable
    ``(y_true, scores) -> float`` computed on the labelled rows (realised only).
    """
    frame = derive_columns(frame, profile)  # <name>.length columns the profile holds
    feats = ([c for c in profile.columns if c in frame.inputs] if features is None else list(features))
    absent = [c for c in feats if c not in frame.rows]
    if absent:
        raise KeyError(f"features {absent} are not columns of the frame (it has {sorted(frame.rows)})")
    if prediction is not None and prediction not in frame.rows:
        raise KeyError(f"prediction column {prediction!r} is not in the frame (outputs: {frame.outputs})")
    if predicted is not None and predicted not in frame.rows:
        raise KeyError(f"predicted column {predicted!r} is not in the frame (outputs: {frame.outputs})")
    if profile_prediction is not None:
        if profile_prediction not in profile.columns:
            raise KeyError(f"profile_prediction {profile_prediction!r} is not in the profile "
                           f"(it has {sorted(profile.columns)})")
        if prediction is None:
            raise ValueError("profile_prediction needs the prediction column; prediction is None")
        prof_pred = profile_prediction
    else:  # the prediction column is tested when the profile holds a column of that name
        prof_pred = prediction if prediction in profile.columns else None
    if estimator is not None and not estimator.fitted:
        raise ValueError("estimator: fit the CBPE on the labelled reference before monitoring")
    if estimator is not None and prediction is None:
        raise ValueError("estimator needs the prediction (score) column; prediction is None")
    if callable(metric):
        head = getattr(metric, "__name__", "metric")
    else:
        head = metric_name(metric)
    thr = threshold if threshold is not None else (estimator.threshold if estimator is not None else 0.5)
    y_all = join_labels(frame, labels) if labels is not None else None
    if y_all is not None and prediction is None:
        raise ValueError("labels need the prediction (score) column; prediction is None")

    records = []
    for w in windows(frame, by, size, origin=origin):
        req = {k: v[w.requests] for k, v in frame.requests.items()}
        n_req, n_rows = w.n_requests, w.n_rows
        duration = w.end - w.start
        failed = int(np.sum(req["code"] != 200))
        rec = {"index": w.index, "start": w.start, "end": w.end, "duration_s": duration,
               "n_rows": n_rows, "n_requests": n_req, "n_failed": failed,
               "throughput": {"rows_per_s": n_rows / duration if duration > 0 else None,
                              "requests_per_s": n_req / duration if duration > 0 else None},
               "latency": _percentiles(req["latency_ms"]),
               "error_rate": failed / n_req if n_req else None,
               "fallback_rate": (float(np.sum(np.not_equal(req["fallback"], None))) / n_req
                                 if n_req else None),
               "drift": None, "features": {}, "prediction": None, "pca": None, "quality": None}
        if n_rows >= max(min_rows, 1):
            cols = frame.row_columns(w.rows)
            if feats:
                rep = check(profile, cols, alpha=alpha, correction=correction, names=feats)
                rec["drift"] = {"n_drifted": len(rep.drifted), "drifted": rep.drifted,
                                "n_tested": sum(1 for c in feats if rep.columns[c]["p_value"] is not None),
                                "missing_drifted": rep.missing_drifted, "alpha": alpha,
                                "correction": correction}
                rec["features"] = {c: _drift_summary(rep.columns[c]) for c in feats}
            if prof_pred is not None:
                prep = check(profile, {prof_pred: cols[prediction]}, alpha=alpha,
                             correction="none", names=[prof_pred])
                rec["prediction"] = {"column": prediction,
                                     **_drift_summary(prep.columns[prof_pred])}
            if pca is not None:
                rec["pca"] = pca.check(cols)
            if prediction is not None and (y_all is not None or estimator is not None):
                rec["quality"] = _quality(cols, y_all[w.rows] if y_all is not None else None,
                                          prediction, predicted, thr, metric, head, estimator)
        records.append(rec)
    config = {"by": by, "size": size, "alpha": alpha, "correction": correction,
              "features": feats, "prediction": prediction, "profile_prediction": prof_pred,
              "threshold": thr, "metric": head, "min_rows": min_rows,
              "estimator": None if estimator is None else
              {"calibrated": estimator.calibrated, "std": estimator.std,
               "reference": estimator.reference, "chunk_size": estimator.chunk_size}}
    return MonitorResult(windows=records, config=config)


def _quality(cols, y, prediction, predicted, thr, metric, head, estimator) -> dict:
    scores = np.asarray(cols[prediction], np.float64)
    yhat = (np.asarray(cols[predicted]).astype(bool) if predicted is not None else scores >= thr)
    scored = np.isfinite(scores)  # a non-finite score is logged as null: no quality from it
    out = {"metric": head, "n": int(scored.sum()), "n_unscored": int((~scored).sum())}
    if not scored.all():
        scores, yhat = scores[scored], yhat[scored]
        y = y[scored] if y is not None else None
    if y is not None:
        have = ~np.isnan(y)
        out["n_labelled"] = int(have.sum())
        out["labelled_fraction"] = float(have.mean()) if have.size else None
        if have.any():
            if callable(metric):
                out["realised"] = {head: float(metric(y[have], scores[have]))}
            else:
                out["realised"] = realised_metrics(y[have], yhat[have], scores[have])
        else:
            out["realised"] = None
    if estimator is not None:
        est = estimator.estimate(scores, yhat)
        out["estimated"] = {m: est[m]["value"] for m in METRICS}
        out["estimated_lower"] = {m: est[m]["lower"] for m in METRICS}
        out["estimated_upper"] = {m: est[m]["upper"] for m in METRICS}
        out["estimated_std"] = {m: est[m]["std"] for m in METRICS}
        out["calibrated"] = est["calibrated"]
    return out
