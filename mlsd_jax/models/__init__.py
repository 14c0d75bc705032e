"""Model zoo: Flax Linen modules (pure ``init``/``apply`` over parameter pytrees)."""
from mlsd_jax.models.layers import (MLP, MultiHeadSelfAttention, TransformerBlock,
                                    TransformerEncoder, dense, layer_norm)
from mlsd_jax.models.ranker import ListwiseAttentionRanker, MLPRanker

__all__ = ["MLP", "dense", "layer_norm", "ListwiseAttentionRanker", "MLPRanker",
           "MultiHeadSelfAttention", "TransformerBlock", "TransformerEncoder"]
