"""Loss functions."""
from mlsd_jax.losses.lambdaweights import dcg_lambdaweight, labeldiff_lambdaweight
from mlsd_jax.losses.ranking import (
    approx_ndcg_loss,
    lambdarank_loss,
    listmle_loss,
    pairwise_hinge_loss,
    pairwise_logistic_loss,
    pointwise_mse_loss,
    pointwise_sigmoid_loss,
    softmax_loss,
)

__all__ = [
    "approx_ndcg_loss",
    "dcg_lambdaweight",
    "labeldiff_lambdaweight",
    "lambdarank_loss",
    "listmle_loss",
    "pairwise_hinge_loss",
    "pairwise_logistic_loss",
    "pointwise_mse_loss",
    "pointwise_sigmoid_loss",
    "softmax_loss",
]
