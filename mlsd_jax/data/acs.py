"""US Census ACS employment data (Massachusetts), the real drift set NannyML ships.

The ``nannyml==0.13.1`` wheel bundles three Parquet files built from the American Community
Survey PUMS via ``folktables`` (ACSEmployment task, state MA): ``employment_MA_reference.pq``
(survey year 2015, 68,785 rows, with the target ``employed`` and a model's ``prediction`` /
``predicted_probability``), ``employment_MA_analysis.pq`` (2016-2018, 208,892 rows, without the target) and
``employment_MA_analysis_target.pq`` (the analysis rows' targets, joined on ``id``).  The wheel is
downloaded and sha256-checked by :func:`mlsd_jax.data.fetch.fetch_packaged`; nannyml itself is
never installed or imported.

Columns: ``AGEP`` (age), ``SCHL`` (education code), ``MAR`` (marital status), ``RELP``
(relationship to the householder), ``DIS``, ``ESP``, ``CIT``, ``MIG``, ``MIL``, ``ANC``, ``NATIVITY``,
``DEAR``, ``DEYE``, ``DREM``, ``SEX``, ``RAC1P`` (ACS codes; all but AGEP are categorical), plus
``id``, ``year`` and the prediction columns.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from mlsd_jax.data.fetch import PackagedFile, fetch_packaged

__all__ = ["ACS_FEATURES", "ACS_NUMERIC", "ACS_REFERENCE", "ACS_ANALYSIS", "ACS_ANALYSIS_TARGET",
           "load_acs_employment"]

_WHEEL = dict(
    registry="pypi",
    package="nannyml",
    version="0.13.1",
    kind="wheel",
    sha256="cf5f4a33489834ae6773cb1baa33a0f98c0a3ee6ed9b43049478b25ce22fe869",
    license_note=("US Census Bureau ACS PUMS (public domain) via folktables; copy redistributed in "
                  "nannyml (Apache-2.0)."),
)
ACS_REFERENCE = PackagedFile(member="nannyml/datasets/data/employment_MA_reference.pq",
                             description="ACS employment, Massachusetts, 2015 (reference): 68,785 rows",
                             **_WHEEL)
ACS_ANALYSIS = PackagedFile(member="nannyml/datasets/data/employment_MA_analysis.pq",
                            description="ACS employment, Massachusetts, 2016-2018 (analysis): 208,892 rows",
                            **_WHEEL)
ACS_ANALYSIS_TARGET = PackagedFile(member="nannyml/datasets/data/employment_MA_analysis_target.pq",
                                   description="ACS employment, Massachusetts: targets of the analysis rows",
                                   **_WHEEL)

ACS_FEATURES = ("AGEP", "SCHL", "MAR", "RELP", "DIS", "ESP", "CIT", "MIG", "MIL", "ANC",
                "NATIVITY", "DEAR", "DEYE", "DREM", "SEX", "RAC1P")
"""The 16 model features of the ACSEmployment task."""
ACS_NUMERIC = ("AGEP",)
"""Features that are quantities; the other ACS features are category codes."""


def _read(path: pathlib.Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out = {}
    for name in table.column_names:
        col = table.column(name)
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype == object:
            arr = np.asarray(arr, dtype=object)
        elif col.null_count:
            arr = arr.astype(np.float64)
        out[name] = arr
    return out


def load_acs_employment(split: str = "reference", *, with_target: bool = True,
                        path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """One split of the ACS employment data as ``{column: numpy array}``.

    ``split`` is ``"reference"`` (2015) or ``"analysis"`` (2016-2018, rows in file order, which
    is by year).  With ``with_target`` the analysis split gains the ``employed`` column from
    the target file (matched on ``id``).  ``path`` reads a local copy of the split's Parquet
    file instead of the packaged one.
    """
    if split not in ("reference", "analysis"):
        raise ValueError(f"split must be 'reference' or 'analysis', got {split!r}")
    spec = ACS_REFERENCE if split == "reference" else ACS_ANALYSIS
    src = pathlib.Path(path) if path is not None else fetch_packaged(spec)
    cols = _read(src)
    if split == "analysis" and with_target and "employed" not in cols:
        tgt = _read(fetch_packaged(ACS_ANALYSIS_TARGET))
        order = np.argsort(tgt["id"], kind="stable")
        pos = np.searchsorted(tgt["id"], cols["id"], sorter=order)
        pos = np.clip(pos, 0, len(order) - 1)
        idx = order[pos]
        if not np.array_equal(tgt["id"][idx], cols["id"]):
            raise ValueError(f"{ACS_ANALYSIS_TARGET.member}: 'id' does not cover every analysis row")
        cols["employed"] = tgt["employed"][idx]
    return cols
