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

# Windowed monitoring of the prediction log, performance estimation and alerts.  (The window
# cutter is ``mlsd_jax.monitoring.windows.windows``; it is not re-exported here, where its name
# would hide the module.)
from mlsd_jax.monitoring.alerts import (Alert, AlertManager, AlertRule, LogSink, MetricsSink,
                                        WebhookSink)
from mlsd_jax.monitoring.estimate import CBPE, expected_metrics, realised_metrics
from mlsd_jax.monitoring.windows import (Frame, MonitorResult, Window, frame_from_columns,
                                         join_labels, monitor, records_frame)

__all__ += ["Frame", "Window", "MonitorResult", "records_frame", "frame_from_columns",
            "join_labels", "monitor", "CBPE", "expected_metrics", "realised_metrics", "AlertRule",
            "Alert", "AlertManager", "LogSink", "WebhookSink", "MetricsSink"]
