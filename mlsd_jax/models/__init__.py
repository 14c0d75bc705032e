"""Model zoo: Flax Linen modules (pure ``init``/``apply`` over parameter pytrees)."""
from mlsd_jax.models.layers import (MLP, MultiHeadSelfAttention, TransformerBlock,
                                    TransformerEncoder, dense, layer_norm)
from mlsd_jax.models.ranker import ListwiseAttentionRanker, MLPRanker

__all__ = ["MLP", "dense", "layer_norm", "ListwiseAttentionRanker", "MLPRanker",
           "MultiHeadSelfAttention", "TransformerBlock", "TransformerEncoder"]

from mlsd_jax.models.conv import ConvBNAct, batch_norm, conv  # noqa: E402
from mlsd_jax.models.embedding import (Embedding, MultiEmbedding, StackedEmbedding,  # noqa: E402
                                       masked_pool)

__all__ += ["ConvBNAct", "batch_norm", "conv", "Embedding", "MultiEmbedding", "StackedEmbedding",
            "masked_pool"]
from mlsd_jax.models.tabular import TabularNet  # noqa: E402

__all__ += ["TabularNet"]
from mlsd_jax.models.ctr import (DCNv2, DeepFM, FactorizationMachine, LogisticRegression,  # noqa: E402
                                 WideDeep)
from mlsd_jax.models.news import NRMS  # noqa: E402
from mlsd_jax.models.recsys import GMF, MF, NCFMLP, NeuMF, SASRec, TwoTower  # noqa: E402

__all__ += ["DCNv2", "DeepFM", "FactorizationMachine", "LogisticRegression", "WideDeep", "NRMS",
            "GMF", "MF", "NCFMLP", "NeuMF", "SASRec", "TwoTower"]
from mlsd_jax.models.text import TfidfLinear  # noqa: E402

__all__ += ["TfidfLinear"]
