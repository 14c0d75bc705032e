"""Neural rankers: score every item of a list ``[..., L, F] -> [..., L]``.

* :class:`MLPRanker` scores each item on its own (a univariate scoring function).
* :class:`ListwiseAttentionRanker` lets the items of a list attend to each other before scoring,
  as in DASALC (Qin et al., "Are Neural Rankers still Outperformed by Gradient Boosted Decision
  Trees?", ICLR 2021): per-item MLP encoding, Gaussian input noise while training, a transformer
  encoder over the list, and the listwise context combined with the item encoding as
  ``h * (1 + a)`` before the scoring head.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlsd_jax.models.layers import MLP, TransformerEncoder


class MLPRanker(nn.Module):
    hidden: Sequence[int] = (256, 128)
    dropout: float = 0.1
    input_noise: float = 0.0
    layer_norm: bool = True

    @nn.compact
    def __call__(self, features, mask=None, *, train: bool = False):
        x = _noisy(self, features, self.input_noise, train)
        scores = MLP(self.hidden, out_features=1, dropout=self.dropout,
                     layer_norm=self.layer_norm)(x, train=train)[..., 0]
        return _mask_scores(scores, mask)


class ListwiseAttentionRanker(nn.Module):
    d_model: int = 128
    encoder_hidden: Sequence[int] = (256,)
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.1
    attention_dropout: float = 0.0
    input_noise: float = 0.1
    head_hidden: Sequence[int] = (128,)

    @nn.compact
    def __call__(self, features, mask=None, *, train: bool = False):
        if mask is None:
            mask = jnp.ones(features.shape[:-1], bool)
        x = _noisy(self, features, self.input_noise, train)
        h = MLP(self.encoder_hidden, out_features=self.d_model, dropout=self.dropout,
                layer_norm=True)(x, train=train)
        a = TransformerEncoder(self.num_layers, self.num_heads, self.mlp_dim, self.dropout,
                               self.attention_dropout)(h, mask, train=train)
        z = h * (1.0 + a)
        scores = MLP(self.head_hidden, out_features=1, dropout=self.dropout)(z, train=train)[..., 0]
        return _mask_scores(scores, mask)


def _noisy(module: nn.Module, x, std: float, train: bool):
    if train and std > 0:
        x = x + std * jax.random.normal(module.make_rng("dropout"), x.shape, x.dtype)
    return x


def _mask_scores(scores, mask):
    # Padded items get a finite, lowest score so sorts and exports never see NaN or inf.
    return scores if mask is None else jnp.where(mask, scores, -1e9)
