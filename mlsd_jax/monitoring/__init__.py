"""Model monitoring statistics: reference profiles and drift tests.

:mod:`~mlsd_jax.monitoring.profile` summarises reference columns (features, predictions, labels)
into a small JSON-serialisable :class:`Profile`; :mod:`~mlsd_jax.monitoring.drift` tests a window
of rows against it (KS / Wasserstein / PSI for numbers; chi-squared / Jensen-Shannon / PSI for
categories; Benjamini-Hochberg or Bonferroni across columns) and holds the multivariate
PCA-reconstruction check.  The real data set for drift work is
:func:`mlsd_jax.data.acs.load_acs_employment`.
"""
from mlsd_jax.monitoring.drift import (DriftReport, PCAReconstruction, adjust_pvalues, check,
                                       chi2_homogeneity, js_distance, ks_2samp, psi, wasserstein)
from mlsd_jax.monitoring.profile import SCHEMA_VERSION, CategoricalProfile, NumericProfile, Profile

__all__ = ["SCHEMA_VERSION", "Profile", "NumericProfile", "CategoricalProfile", "DriftReport",
           "PCAReconstruction", "check", "ks_2samp", "wasserstein", "chi2_homogeneity",
           "js_distance", "psi", "adjust_pvalues"]
