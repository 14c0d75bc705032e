"""The feedback loop's training rows: logged request inputs joined with labels that came later.

* :func:`feedback_table` reads the prediction log (:func:`mlsd_jax.serving.predlog.read_records`
  -> :func:`mlsd_jax.monitoring.windows.records_frame`), keeps the successful requests' rows
  (optionally of one model, and with ``since <= ts < until``), joins the labels by request id and
  row (:func:`mlsd_jax.monitoring.windows.join_labels`) and returns the labelled rows as columns:
  the signature inputs exactly as they were logged (raw, as a client sent them), the label, and
  ``request_id`` / ``row`` / ``ts`` to trace each row back to its request. Rows without a label
  are dropped; :attr:`FeedbackTable.n_unlabelled` counts them. Rows come in log order (time,
  then row within the request).
* :func:`split_fresh` holds out the freshest ``n`` labelled rows (the evaluation window) and
  returns the older ones for training, so no evaluated row is ever trained on.
* :func:`write_feedback` writes a table as Parquet (pyarrow) or CSV; :func:`read_feedback` reads
  either back (the tabular task's ``data.feedback`` option reads files with it).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["FeedbackTable", "feedback_table", "split_fresh", "write_feedback", "read_feedback",
           "TRACE_COLUMNS"]

TRACE_COLUMNS = ("request_id", "row", "ts")


@dataclasses.dataclass
class FeedbackTable:
    """Labelled logged rows: ``columns`` (inputs, label, request_id, row, ts; equal lengths)."""

    columns: dict
    inputs: list
    label_name: str
    n_logged: int        # successful rows in the selected part of the log
    n_unlabelled: int    # of which without a label (dropped)

    @property
    def n_rows(self) -> int:
        return int(len(self.columns[self.label_name]))

    def take(self, rows: np.ndarray | slice) -> "FeedbackTable":
        """The same table restricted to ``rows`` (counts of the log kept)."""
        return dataclasses.replace(self, columns={k: v[rows] for k, v in self.columns.items()})

    def inputs_of(self) -> dict:
        """The signature inputs only (what a model is given)."""
        return {k: self.columns[k] for k in self.inputs}


def feedback_table(log_dir: str | Path, labels, *, signature_inputs: Sequence[str],
                   label_name: str = "label", since: float | None = None,
                   until: float | None = None, model: str | None = None) -> FeedbackTable:
    """Labelled training rows from a prediction log (module docstring).

    ``labels``: anything :func:`mlsd_jax.monitoring.windows.join_labels` takes (e.g. the columns
    read by ``experiments.monitor.read_labels``). ``signature_inputs``: the input names to keep;
    each must be a logged input. ``since`` / ``until``: request times (seconds since the epoch),
    ``since <= ts < until``. ``model``: only requests answered for this model name.
    """
    from mlsd_jax.monitoring.windows import join_labels, records_frame
    from mlsd_jax.serving.predlog import log_files, read_records

    log_dir = Path(log_dir)
    if not log_dir.is_dir() or not log_files(log_dir):
        raise FileNotFoundError(f"log_dir={str(log_dir)!r}: no prediction log files "
                                f"(predictions-*.sqlite) there")
    records = [r for r in read_records(log_dir) if model is None or r["model"] == model]
    if not records:
        raise ValueError(f"log_dir={str(log_dir)!r}: no records"
                         + (f" of model {model!r}" if model is not None else ""))
    frame = records_frame(records)
    names = list(signature_inputs)
    absent = [n for n in names if n not in frame.inputs]
    if absent:
        raise KeyError(f"log_dir={str(log_dir)!r}: the signature inputs {absent} are not logged "
                       f"inputs (logged: {frame.inputs})")
    if label_name in names or label_name in TRACE_COLUMNS:
        raise ValueError(f"label_name={label_name!r} collides with an input or trace column")
    ts = np.asarray(frame.rows["ts"], np.float64)
    keep = np.ones(len(ts), bool)
    if since is not None:
        keep &= ts >= float(since)
    if until is not None:
        keep &= ts < float(until)
    y = join_labels(frame, labels).astype(np.float64)
    labelled = keep & np.isfinite(y)
    cols = {n: np.asarray(frame.rows[n])[labelled] for n in names}
    cols[label_name] = y[labelled]
    cols["request_id"] = np.asarray(frame.rows["request_id"], dtype=object)[labelled]
    cols["row"] = np.asarray(frame.rows["row"], np.int64)[labelled]
    cols["ts"] = ts[labelled]
    return FeedbackTable(columns=cols, inputs=names, label_name=label_name,
                         n_logged=int(keep.sum()), n_unlabelled=int((keep & ~np.isfinite(y)).sum()))


def split_fresh(table: FeedbackTable, n: int) -> tuple[FeedbackTable, FeedbackTable]:
    """``(older rows for training, freshest n rows for evaluation)``: the table is in log
    order, so the evaluation window is its last ``n`` rows (all of them when fewer)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"eval_window={n!r}: expected an integer >= 1 (labelled rows)")
    order = np.lexsort((table.columns["row"], table.columns["ts"]))   # stable: by time, then row
    cut = max(table.n_rows - int(n), 0)
    return table.take(order[:cut]), table.take(order[cut:])


# ----------------------------------------------------------------------------- files
def write_feedback(table: FeedbackTable | Mapping[str, Any], path: str | Path) -> Path:
    """Writes the columns as Parquet (``.parquet``, via pyarrow) or CSV (``.csv``); strings stay
    strings, missing values are null (Parquet) or empty (CSV)."""
    cols = table.columns if isinstance(table, FeedbackTable) else dict(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = {k: len(v) for k, v in cols.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"feedback columns differ in length: {lengths}")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = {}
        for k, v in cols.items():
            a = np.asarray(v)
            if a.dtype == object or a.dtype.kind in "US":
                arrays[k] = pa.array([None if _missing(x) else str(x) for x in a.tolist()],
                                     pa.string())
            else:
                arrays[k] = pa.array(a)
        pq.write_table(pa.table(arrays), path)
    elif path.suffix == ".csv":
        names = list(cols)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(names)
            for row in zip(*(np.asarray(cols[k]).tolist() for k in names)):
                w.writerow(["" if _missing(x) else x for x in row])
    else:
        raise ValueError(f"feedback file {str(path)!r}: expected a .parquet or .csv name")
    return path


def read_feedback(path: str | Path) -> dict[str, np.ndarray]:
    """A feedback file as columns: Parquet keeps its types (strings as object arrays with None
    for null, numbers as float64 with NaN for null); CSV columns are text (None for empty),
    converted by the reader's caller."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feedback file {str(path)!r} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        out = {}
        for name in t.column_names:
            col = t.column(name)
            values = col.to_pylist()
            if col.type in (_pa().string(), _pa().large_string()):
                out[name] = np.asarray(values, dtype=object)
            else:
                out[name] = np.asarray([np.nan if v is None else v for v in values], np.float64)
        return out
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.reader(f)
            try:
                header = next(reader)
            except StopIteration:
                raise ValueError(f"feedback file {str(path)!r} is empty (no header)") from None
            rows = list(reader)
        return {h: np.asarray([r[i] if r[i] != "" else None for r in rows], dtype=object)
                for i, h in enumerate(header)}
    raise ValueError(f"feedback file {str(path)!r}: expected a .parquet or .csv file")


def _pa():
    import pyarrow

    return pyarrow


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))
