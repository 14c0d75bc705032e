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
