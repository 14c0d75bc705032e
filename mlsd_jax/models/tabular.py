"""Models for mixed tabular features: embeddings for ids, numbers as they are, an MLP on top.

Inputs are the dict a fitted :class:`~mlsd_jax.features.FeatureSpec` produces: integer arrays
named in ``cardinalities`` are categorical ids (one embedding table each, OOV-safe), floating
arrays are numeric (standardised, imputed, missing indicators...). ``TabularNet`` is a
Wide & Deep style network: a deep MLP over the concatenated embeddings and numbers, plus a wide
linear term (a one-dimensional embedding per field), summed into one logit.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mlsd_jax.models.embedding import MultiEmbedding
from mlsd_jax.models.layers import MLP, dense


class TabularNet(nn.Module):
    cardinalities: Mapping[str, int]
    embed_dim: int = 16
    hidden: Sequence[int] = (256, 128)
    dropout: float = 0.1
    batch_norm: bool = False
    wide: bool = True
    num_outputs: int = 1

    @nn.compact
    def __call__(self, inputs: Mapping[str, jnp.ndarray], *, train: bool = False):
        ids = {k: inputs[k] for k in self.cardinalities}
        numeric = [jnp.reshape(v, (v.shape[0], -1)).astype(jnp.float32)
                   for k, v in sorted(inputs.items())
                   if k not in self.cardinalities and jnp.issubdtype(v.dtype, jnp.floating)]
        parts = []
        if ids:
            emb = MultiEmbedding(dict(self.cardinalities), self.embed_dim, name="deep_embed")(ids)
            parts += [emb[k] for k in self.cardinalities]
        x = jnp.concatenate(parts + numeric, axis=-1)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="input_bn")(x)
        logit = MLP(self.hidden, out_features=self.num_outputs, dropout=self.dropout,
                    layer_norm=not self.batch_norm)(x, train=train)
        if self.wide:
            terms = []
            if ids:
                wide = MultiEmbedding(dict(self.cardinalities), self.num_outputs,
                                      embedding_init=nn.initializers.zeros, name="wide_embed")(ids)
                terms.append(sum(wide[k] for k in self.cardinalities))
            if numeric:
                terms.append(dense(self.num_outputs, "embed", "embed", name="wide_numeric")(
                    jnp.concatenate(numeric, axis=-1)))
            logit = logit + sum(terms)
        return logit[..., 0] if self.num_outputs == 1 else logit
