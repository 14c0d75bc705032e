"""Annotated change-point series of the Turing Change Point Dataset (TCPD), as river ships them.

The ``river==0.26.1`` wheel bundles seven TCPD series (van den Burg & Williams, 2020) under
``river/drift/datasets/``: one CSV per series and, in the matching ``.py`` module, the
annotations -- the change points each of the five annotators marked (0-based indices into the
series; an annotator may mark none).  :func:`load_tcpd` fetches both wheel members with
:func:`mlsd_jax.data.fetch.fetch_packaged` (sha256-pinned wheel; river itself is never installed
or imported), reads the CSV, and takes the annotations from the module's source with
:mod:`ast` (a literal, never executed).

Two of river's CSVs hold the unsampled source series while the annotations index TCPD's
subsampled one; the loader applies TCPD's own subsampling (its ``get_apple.py`` and
``brent_spot/convert.py``) so that indices and values line up with the benchmark's series:

* ``apple``: drop the first row, keep every 3rd row -> 622 observations; TCPD uses the
  ``Close`` and ``Volume`` columns;
* ``brent_crude_oil`` (TCPD ``brent_spot``): keep every 10th row from the first, then the rows
  from the first one dated in 2000 -> 500 observations.

The others are used as shipped (TCPD's length = river's ``n_samples``): ``airline_passengers``
(TCPD ``jfk_passengers``, 468), ``bitcoin`` (822), ``occupancy`` (509, 4 columns), ``run_log``
(376, 2 columns), ``uk_coal_employment`` (TCPD ``uk_coal_employ``, 105).

Licences: TCPD's series are redistributed by river (BSD-3-Clause); see each series' source in
the river module docstrings (Yahoo Finance, EIA, blockchain.com, UK government, Kaggle/NYS,
UCI occupancy, a running log).
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import os
import pathlib

import numpy as np

from mlsd_jax.data.fetch import PackagedFile, fetch_packaged

__all__ = ["TCPD_SERIES", "TCPDSeries", "load_tcpd", "tcpd_files"]

_WHEEL = dict(
    registry="pypi",
    package="river",
    version="0.26.1",
    kind="wheel",
    sha256="e178d2d20ec1ba7228bd5d89fa8b70cd302b95e73a3c8a5e528153ecc678a019",  # cp311-abi3-manylinux_2_28_x86_64
    license_note="TCPD series (van den Burg & Williams 2020) redistributed in river (BSD-3-Clause).",
)
_DIR = "river/drift/datasets"

# river file stem -> (TCPD name, value columns, rows as shipped in river's CSV, subsampling rule)
_SPECS = {
    "airline_passengers": ("jfk_passengers", ("Total Passengers",), 468, None),
    "apple": ("apple", ("Close", "Volume"), 1867, "apple"),
    "bitcoin": ("bitcoin", ("price",), 822, None),
    "brent_crude_oil": ("brent_spot", ("DPB",), 8195, "brent"),
    "occupancy": ("occupancy", ("V1", "V2", "V3", "V4"), 509, None),
    "run_log": ("run_log", ("Pace", "Distance"), 376, None),
    "uk_coal_employment": ("uk_coal_employ", ("Employment",), 105, None),
}
TCPD_SERIES = tuple(_SPECS)
"""The series names (river's file stems) :func:`load_tcpd` accepts."""


@dataclasses.dataclass
class TCPDSeries:
    """One annotated series: ``values`` is ``(n_obs, n_dim)`` float64, ``time`` the raw time
    stamps (strings), ``annotations`` ``{annotator id: sorted change-point indices}``."""

    name: str
    tcpd_name: str
    columns: tuple
    time: np.ndarray
    values: np.ndarray
    annotations: dict

    @property
    def n_obs(self) -> int:
        return int(self.values.shape[0])

    @property
    def change_points(self) -> list:
        """The union of all annotators' change points, sorted (TCPD's ``T*`` without 0)."""
        return sorted({int(t) for v in self.annotations.values() for t in v})


def _member(stem: str, ext: str) -> PackagedFile:
    return PackagedFile(member=f"{_DIR}/{stem}.{ext}",
                        description=f"TCPD series {stem!r} ({'values' if ext == 'csv' else 'annotations'})",
                        **_WHEEL)


def tcpd_files(name: str) -> tuple[PackagedFile, PackagedFile]:
    """The (CSV, annotation module) wheel members of series ``name``."""
    if name not in _SPECS:
        raise ValueError(f"unknown TCPD series {name!r}; expected one of {list(TCPD_SERIES)}")
    return _member(name, "csv"), _member(name, "py")


def _annotations(path: pathlib.Path) -> dict:
    """The ``annotations={...}`` literal of the dataset class in a river module."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot parse the annotation module: {e}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "annotations":
            try:
                ann = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(f"{path}: 'annotations' is not a literal dict of lists") from None
            if not isinstance(ann, dict) or not all(
                    isinstance(v, list) and all(isinstance(i, int) for i in v) for v in ann.values()):
                raise ValueError(f"{path}: 'annotations' must map annotator ids to lists of "
                                 f"integer indices, got {ann!r}")
            return {str(k): sorted(v) for k, v in ann.items()}
    raise ValueError(f"{path}: no 'annotations=' keyword found (expected the TCPD annotations "
                     "passed to ChangePointFileDataset)")


def _read_csv(path: pathlib.Path, columns: tuple) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty file (expected a header and rows)")
    header, body = rows[0], [r for r in rows[1:] if r]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; header is {header}")
    idx = [header.index(c) for c in columns]
    vals = np.empty((len(body), len(columns)))
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(f"{path}: row {i + 2} has {len(r)} fields, the header {len(header)}")
        for j, (k, c) in enumerate(zip(idx, columns)):
            try:
                vals[i, j] = float(r[k])
            except ValueError:
                raise ValueError(f"{path}: row {i + 2}, column {c!r}: expected a number, "
                                 f"got {r[k]!r}") from None
    return np.asarray([r[0] for r in body], dtype=str), vals


def load_tcpd(name: str, *, csv_path: str | os.PathLike | None = None,
              annotations_path: str | os.PathLike | None = None) -> TCPDSeries:
    """Series ``name`` (one of :data:`TCPD_SERIES`) with its annotations.

    ``csv_path`` / ``annotations_path`` read local copies of the two wheel members instead of
    the packaged ones (same format).  Raises ``ValueError`` naming the file and the field when
    a file does not match the expected layout (columns, numbers, row count, annotation range).
    """
    if name not in _SPECS:
        raise ValueError(f"unknown TCPD series {name!r}; expected one of {list(TCPD_SERIES)}")
    tcpd_name, columns, n_rows, rule = _SPECS[name]
    csv_spec, py_spec = tcpd_files(name)
    cpath = pathlib.Path(csv_path) if csv_path is not None else fetch_packaged(csv_spec)
    apath = pathlib.Path(annotations_path) if annotations_path is not None else fetch_packaged(py_spec)
    time, vals = _read_csv(cpath, columns)
    if len(vals) != n_rows:
        raise ValueError(f"{cpath}: expected {n_rows} rows for series {name!r}, found {len(vals)}")
    if rule == "apple":
        keep = np.arange(1, len(vals))[::3]
    elif rule == "brent":
        keep = np.arange(0, len(vals), 10)
        first = next((i for i, t in enumerate(time[keep]) if t.endswith("2000")), None)
        if first is None:
            raise ValueError(f"{cpath}: column 'day' has no date in 2000 (TCPD starts brent_spot there)")
        keep = keep[first:]
    else:
        keep = np.arange(len(vals))
    time, vals = time[keep], vals[keep]
    ann = _annotations(apath)
    bad = {k: [i for i in v if not 0 <= i < len(vals)] for k, v in ann.items()}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise ValueError(f"{apath}: annotations {bad} fall outside the series' {len(vals)} observations")
    return TCPDSeries(name=name, tcpd_name=tcpd_name, columns=columns, time=time, values=vals,
                      annotations=ann)
