"""Model zoo: Flax Linen modules (pure ``init``/``apply`` over parameter pytrees)."""
from mlsd_jax.models.layers import (MLP, Dense, LayerNorm, MultiHeadSelfAttention,
                                    TransformerBlock, TransformerEncoder)
from mlsd_jax.models.ranker import ListwiseAttentionRanker, MLPRanker

__all__ = ["MLP", "Dense", "LayerNorm", "ListwiseAttentionRanker", "MLPRanker",
           "MultiHeadSelfAttention", "TransformerBlock", "TransformerEncoder"]
