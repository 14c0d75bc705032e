"""Evaluation metrics."""
from mlsd_jax.metrics.ranking import (
    dcg_metric,
    map_metric,
    mrr_metric,
    ndcg_metric,
    precision_metric,
    recall_metric,
)

__all__ = [
    "dcg_metric",
    "map_metric",
    "mrr_metric",
    "ndcg_metric",
    "precision_metric",
    "recall_metric",
]

# Mergeable accumulators for whole-split evaluation (update on device, merge/compute on host).
from mlsd_jax.metrics.streaming import (  # noqa: E402
    F1,
    MAE,
    RMSE,
    Accuracy,
    AveragePrecision,
    BinaryAUC,
    CharErrorRate,
    ExpectedCalibrationError,
    LogLoss,
    Mean,
    Metric,
    PerExampleMean,
    Precision,
    Recall,
    TopKAccuracy,
    WordErrorRate,
    accumulate,
    evaluate_arrays,
)

__all__ += [
    "Metric", "evaluate_arrays", "accumulate", "PerExampleMean", "Mean", "LogLoss", "Accuracy",
    "TopKAccuracy", "Precision", "Recall", "F1", "ExpectedCalibrationError", "RMSE", "MAE",
    "BinaryAUC", "AveragePrecision", "WordErrorRate", "CharErrorRate",
]
