"""Recommendation models (Flax Linen) and their training losses.

Every model scores users against items through one interface, so training, the evaluators and
serving call them alike:

* ``model(users, items, train=...) -> [B, C]``: each user against its own candidates;
* ``model.catalogue_scores(users, items) -> [B, I]``: every user against one item list (the
  whole catalogue in full-ranking evaluation and full-softmax training);
* factorised models (score = user vector . item vector) also expose ``user_vectors`` and
  ``item_vectors`` (in-batch softmax training, ANN serving).

``users`` and ``items`` are dicts of id arrays (ids follow the fitted vocabularies: 0 = padding
or missing, 1 = the out-of-vocabulary bucket, 2.. known values): ``user_id`` [B]; side fields
such as ``gender`` [B]; ``history`` [B, L] with ``history/mask``; ``item_id`` [...]; item side
fields ``genres`` [..., G] with ``genres/mask`` and ``year`` [...]. Every id table is an
:class:`~mlsd_jax.models.embedding.Embedding` (rows shard over the ``model`` mesh axis; row-wise
Adagrad applies to them); tables are initialised Xavier-normal as in RecBole.

Models: :class:`MF` (BPR-MF, Rendle et al. 2009), :class:`GMF`, :class:`NCFMLP` and
:class:`NeuMF` (He et al. 2017; the three share the GMF and MLP branches), :class:`TwoTower`
(Yi et al. 2019: user and item towers over ids and side features, in-batch softmax with
log-Q correction) and :class:`SASRec` (Kang & McAuley 2018: a transformer over the user's
history, the item table shared by input and output).

Cold start: an unseen user or item id reads the OOV row (id 1). With ``id_dropout > 0``
training replaces known ids by it with that probability, so the row learns an "average"
user/item (the two-tower's default, 0.05); at 0 (MF and NCF, trained as RecBole trains them)
the row keeps its initial values and those models rank arbitrarily for an unseen user. The
towers of :class:`TwoTower` and :class:`SASRec` also read the side fields and the history the
client sends, so an unseen user with a history is served from it.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlsd_jax.models.embedding import Embedding, MultiEmbedding
from mlsd_jax.models.layers import MLP, TransformerEncoder, dense, layer_norm

__all__ = ["BCELoss", "BPRLoss", "GMF", "InBatchSoftmaxLoss", "MF", "ModelLoss", "NCFMLP",
           "NeuMF", "OOV_ID", "SASRec", "SoftmaxLoss", "TwoTower", "in_batch_logits"]

OOV_ID = 1          # the OOV bucket of a fitted vocabulary (mlsd_jax.features.ids)
_MASKED = -1e9      # logit of excluded softmax entries (finite: gradients stay finite)
XAVIER = nn.initializers.xavier_normal()


# ------------------------------------------------------------------------------------- losses
def _weighted_mean(per, weight):
    w = jnp.asarray(weight, jnp.float32)
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1e-9)


@dataclasses.dataclass(frozen=True)
class _Loss:
    """A loss reads the forward outputs ``needs`` says to compute: ``"candidates"`` (scores of
    the positive then ``negatives`` sampled items, ``[B, 1 + N]``), ``"in_batch"`` (user and
    item vectors of the batch) or ``"catalogue"`` (scores over every item id, ``[B, V]``)."""

    needs: ClassVar[str] = "candidates"

    @property
    def negatives(self) -> int:
        return 0

    def resolve(self, model_cls) -> "_Loss":
        """The loss to train ``model_cls`` with (itself; :class:`ModelLoss` picks the model's)."""
        if self.needs == "in_batch" and not model_cls.factorised:
            raise ValueError(f"loss {type(self).__name__} needs user and item vectors; "
                             f"{model_cls.__name__} scores (user, item) pairs with an MLP: use "
                             "recommendation/loss=bpr or bce")
        return self


@dataclasses.dataclass(frozen=True)
class BPRLoss(_Loss):
    """Bayesian personalised ranking: ``-log sigmoid(s(u, i+) - s(u, i-))``, averaged over
    ``num_negatives`` uniform negatives per positive (RecBole's BPR: 1)."""

    num_negatives: int = 1

    def __post_init__(self):
        if self.num_negatives < 1:
            raise ValueError(f"loss.num_negatives={self.num_negatives}: expected >= 1")

    @property
    def negatives(self) -> int:
        return self.num_negatives

    def __call__(self, outputs, batch):
        s = outputs["scores"]
        margin = s[:, :1] - s[:, 1:]
        per = -jnp.mean(jax.nn.log_sigmoid(margin), axis=1)
        return _weighted_mean(per, batch["weight"]), {"pos_minus_neg": jnp.mean(margin)}


@dataclasses.dataclass(frozen=True)
class BCELoss(_Loss):
    """Pointwise log loss of NCF: label 1 for the positive, 0 for each of ``num_negatives``
    uniform negatives (He et al. use 4), averaged over the ``1 + N`` pairs."""

    num_negatives: int = 4

    def __post_init__(self):
        if self.num_negatives < 1:
            raise ValueError(f"loss.num_negatives={self.num_negatives}: expected >= 1")

    @property
    def negatives(self) -> int:
        return self.num_negatives

    def __call__(self, outputs, batch):
        s = outputs["scores"]
        labels = jnp.zeros_like(s).at[:, 0].set(1.0)
        per = jnp.mean(jnp.logaddexp(0.0, s) - labels * s, axis=1)
        return _weighted_mean(per, batch["weight"]), {"pos_prob": jnp.mean(jax.nn.sigmoid(s[:, 0]))}


def in_batch_logits(user, item, log_q, user_ids, item_ids, weight, *, logq_correction: bool = True,
                    mask_accidental: bool = True):
    """``[B, B]`` logits of row ``b``'s user against every in-batch item (label: the diagonal).

    Log-Q correction (Yi et al. 2019): in-batch negatives are sampled with probability ``q``
    proportional to their training frequency, so ``log q(item)`` is subtracted from every logit
    to make the sampled softmax an unbiased estimate of the full one. Accidental positives are
    masked: another column holding the same item, or an item of another row of the same user.
    Padding rows (weight 0) are never negatives.
    """
    logits = jnp.einsum("bd,cd->bc", user, item)
    if logq_correction:
        logits = logits - log_q[None, :]
    off_diagonal = ~jnp.eye(logits.shape[0], dtype=bool)
    masked = (weight[None, :] <= 0) & off_diagonal
    if mask_accidental:
        same = (item_ids[:, None] == item_ids[None, :]) | (user_ids[:, None] == user_ids[None, :])
        masked = masked | (same & off_diagonal)
    return jnp.where(masked, _MASKED, logits)


@dataclasses.dataclass(frozen=True)
class InBatchSoftmaxLoss(_Loss):
    """Sampled softmax over the batch's positives, with log-Q correction and accidental
    positives masked (see :func:`in_batch_logits`)."""

    logq_correction: bool = True
    mask_accidental: bool = True
    needs: ClassVar[str] = "in_batch"

    def __call__(self, outputs, batch):
        logits = in_batch_logits(outputs["user"], outputs["item"], outputs["item_log_q"],
                                 batch["user_id"], batch["item_id"], batch["weight"],
                                 logq_correction=self.logq_correction,
                                 mask_accidental=self.mask_accidental)
        per = jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
        return _weighted_mean(per, batch["weight"]), {}


@dataclasses.dataclass(frozen=True)
class SoftmaxLoss(_Loss):
    """Full softmax cross-entropy of the positive item over every item id of the vocabulary
    (RecBole's ``CE`` for sequential models; with :class:`MF` the multinomial likelihood of
    Mult-VAE, one positive per example): ``logsumexp_j s(u, j) - s(u, i+)``, no sampling.

    Id 0 (padding) is excluded; the OOV row (id 1, which scores every item unseen in training)
    is an ordinary negative. The user's other training items stay in the denominator, as in the
    multinomial likelihood: each is the target of its own example, so together they raise the
    user's known items against the rest of the catalogue (evaluation masks them anyway)."""

    needs: ClassVar[str] = "catalogue"

    def __call__(self, outputs, batch):
        s = outputs["scores"].astype(jnp.float32)
        s = s.at[:, 0].set(_MASKED)
        target = jnp.take_along_axis(s, batch["item_id"][:, None].astype(jnp.int32), axis=1)[:, 0]
        per = jax.nn.logsumexp(s, axis=1) - target
        return _weighted_mean(per, batch["weight"]), {}


@dataclasses.dataclass(frozen=True)
class ModelLoss(_Loss):
    """Each model's own loss (its ``default_loss``): MF -> BPR; GMF, NCF-MLP, NeuMF -> BCE with
    4 negatives; TwoTower -> in-batch softmax with log-Q; SASRec -> full softmax."""

    def resolve(self, model_cls) -> _Loss:
        return DEFAULT_LOSSES[model_cls.default_loss].resolve(model_cls)


# A model names its own loss (``Recommender.default_loss``); Flax would wrap a callable class
# attribute as a method, so models hold the name.
DEFAULT_LOSSES = {"bpr": BPRLoss(), "bce": BCELoss(), "sampled_softmax": InBatchSoftmaxLoss(),
                  "softmax": SoftmaxLoss()}


# ------------------------------------------------------------------------------------- models
def _table(num: int, dim: int, name: str | None = None) -> Embedding:
    return Embedding(int(num), int(dim), embedding_init=XAVIER, name=name)


def _drop_ids(module: nn.Module, ids, rate: float, train: bool):
    """Known ids replaced by the OOV id with probability ``rate`` (training only)."""
    if not train or rate <= 0:
        return ids
    drop = jax.random.bernoulli(module.make_rng("dropout"), rate, ids.shape)
    return jnp.where(drop & (ids > OOV_ID), OOV_ID, ids)


def _broadcast_users(x, like):
    """User rows ``[B, D]`` broadcast against candidates ``[B, C, ...]`` -> ``[B, C, D]``."""
    return jnp.broadcast_to(x[:, None, :], like.shape[:2] + x.shape[-1:])


class Recommender(nn.Module):
    """Base: what a model reads (class flags) and the shared scoring paths."""

    uses_user_id: ClassVar[bool] = True
    uses_history: ClassVar[bool] = False
    uses_user_features: ClassVar[bool] = False
    uses_item_features: ClassVar[bool] = False
    factorised: ClassVar[bool] = True
    default_loss: ClassVar[str] = "bpr"

    def score_bias(self):
        return 0.0

    def __call__(self, users, items, *, train: bool = False):
        u = self.user_vectors(users, train=train)
        v = self.item_vectors(items, train=train)
        return jnp.einsum("bd,bcd->bc", u, v) + self.score_bias()

    def catalogue_scores(self, users, items, *, train: bool = False):
        u = self.user_vectors(users, train=train)
        v = self.item_vectors(items, train=train)
        return jnp.einsum("bd,id->bi", u, v) + self.score_bias()


class MF(Recommender):
    """Matrix factorisation: ``s(u, i) = p_u . q_i`` (BPR-MF, RecBole's ``BPR``; the model
    option ``mf_softmax`` trains it with :class:`SoftmaxLoss` instead)."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 64
    id_dropout: float = 0.0

    def setup(self):
        self.user = _table(self.cardinalities["user_id"], self.embed_dim)
        self.item = _table(self.cardinalities["item_id"], self.embed_dim)

    def user_vectors(self, users, *, train: bool = False):
        return self.user(_drop_ids(self, users["user_id"], self.id_dropout, train))

    def item_vectors(self, items, *, train: bool = False):
        return self.item(items["item_id"])


class GMFBranch(nn.Module):
    """NCF's generalised matrix factorisation branch: ``p_u * q_i`` (element-wise)."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 64
    id_dropout: float = 0.0

    def setup(self):
        self.user = _table(self.cardinalities["user_id"], self.embed_dim)
        self.item = _table(self.cardinalities["item_id"], self.embed_dim)

    def users(self, user_id, train: bool = False):
        return self.user(_drop_ids(self, user_id, self.id_dropout, train))

    def items(self, item_id):
        return self.item(item_id)

    def __call__(self, user_id, item_id, *, train: bool = False):
        """``[B, C, D]`` for users ``[B]`` and candidates ``[B, C]``."""
        return self.users(user_id, train)[:, None, :] * self.items(item_id)


class MLPBranch(nn.Module):
    """NCF's MLP branch: ``MLP([p_u, q_i])`` over the concatenated embeddings."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 64
    hidden: Sequence[int] = (128, 64)
    dropout: float = 0.1
    id_dropout: float = 0.0

    @nn.compact
    def __call__(self, user_id, item_id, *, train: bool = False):
        p = _table(self.cardinalities["user_id"], self.embed_dim, "user")(
            _drop_ids(self, user_id, self.id_dropout, train))
        q = _table(self.cardinalities["item_id"], self.embed_dim, "item")(item_id)
        x = jnp.concatenate([_broadcast_users(p, q), q], axis=-1)
        return MLP(tuple(self.hidden), dropout=self.dropout, name="tower")(x, train=train)


class _PairScorer(Recommender):
    """A model that scores (user, item) pairs with an MLP: the catalogue is scored in chunks of
    ``score_chunk`` items, so memory stays ``B x chunk x width``."""

    factorised: ClassVar[bool] = False
    default_loss: ClassVar[str] = "bce"
    score_chunk: ClassVar[int] = 512

    def catalogue_scores(self, users, items, *, train: bool = False):
        n = items["item_id"].shape[0]
        batch = users["user_id"].shape[0]
        parts = []
        for lo in range(0, n, self.score_chunk):
            ids = items["item_id"][lo:lo + self.score_chunk]
            parts.append(self(users, {"item_id": jnp.broadcast_to(ids[None], (batch,) + ids.shape)},
                              train=train))
        return jnp.concatenate(parts, axis=1)


class GMF(Recommender):
    """NCF's GMF: ``s(u, i) = h . (p_u * q_i) + b``, factorised as ``(h * p_u) . q_i + b``."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 64
    id_dropout: float = 0.0
    default_loss: ClassVar[str] = "bce"

    def setup(self):
        self.gmf = GMFBranch(self.cardinalities, self.embed_dim, self.id_dropout)
        self.h = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")), (self.embed_dim, 1))
        self.b = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros_init(), ("mlp",)), (1,))

    def score_bias(self):
        return self.b[0]

    def user_vectors(self, users, *, train: bool = False):
        return self.gmf.users(users["user_id"], train) * self.h[:, 0]

    def item_vectors(self, items, *, train: bool = False):
        return self.gmf.items(items["item_id"])


class NCFMLP(_PairScorer):
    """NCF's MLP model: ``s(u, i) = w . MLP([p_u, q_i]) + b``."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 64
    hidden: Sequence[int] = (128, 64)
    dropout: float = 0.1
    id_dropout: float = 0.0

    @nn.compact
    def __call__(self, users, items, *, train: bool = False):
        h = MLPBranch(self.cardinalities, self.embed_dim, tuple(self.hidden), self.dropout,
                      self.id_dropout, name="mlp")(users["user_id"], items["item_id"], train=train)
        return dense(1, "embed", "embed", name="out")(h)[..., 0]


class NeuMF(_PairScorer):
    """NeuMF: ``s(u, i) = w . [p_u * q_i, MLP([p'_u, q'_i])] + b`` (GMF and MLP branches with
    their own tables, fused by one output layer)."""

    cardinalities: Mapping[str, int]
    embed_dim: int = 64
    mlp_embed_dim: int = 64
    hidden: Sequence[int] = (128, 64)
    dropout: float = 0.1
    id_dropout: float = 0.0

    @nn.compact
    def __call__(self, users, items, *, train: bool = False):
        g = GMFBranch(self.cardinalities, self.embed_dim, self.id_dropout, name="gmf")(
            users["user_id"], items["item_id"], train=train)
        h = MLPBranch(self.cardinalities, self.mlp_embed_dim, tuple(self.hidden), self.dropout,
                      self.id_dropout, name="mlp")(users["user_id"], items["item_id"], train=train)
        return dense(1, "embed", "embed", name="out")(jnp.concatenate([g, h], axis=-1))[..., 0]


def _l2_normalize(x):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class TwoTower(Recommender):
    """Two towers scored by cosine / ``temperature``.

    User tower: user id, side fields (``user_fields``) and the mean of the history's item
    vectors (the item id table, shared with the item tower) -> MLP. Item tower: item id, side
    fields (``item_fields``; multi-valued ones in ``item_multi_fields`` are mean-pooled over
    their mask) -> MLP. Both outputs are L2-normalised; the user vector carries the
    ``1 / temperature`` so their dot product is the score and ANN search ranks the same.
    """

    cardinalities: Mapping[str, int]
    user_fields: Sequence[str] = ()
    item_fields: Sequence[str] = ()
    item_multi_fields: Sequence[str] = ()
    embed_dim: int = 64
    field_dim: int = 16
    hidden: Sequence[int] = (128,)
    dropout: float = 0.0
    temperature: float = 0.05
    id_dropout: float = 0.0

    uses_history: ClassVar[bool] = True
    uses_user_features: ClassVar[bool] = True
    uses_item_features: ClassVar[bool] = True
    default_loss: ClassVar[str] = "sampled_softmax"

    def setup(self):
        self.user = _table(self.cardinalities["user_id"], self.embed_dim)
        self.item = _table(self.cardinalities["item_id"], self.embed_dim)
        self.user_side = MultiEmbedding({f: self.cardinalities[f] for f in self.user_fields},
                                        self.field_dim, embedding_init=XAVIER) \
            if self.user_fields else None
        item_side = tuple(self.item_fields) + tuple(self.item_multi_fields)
        self.item_side = MultiEmbedding({f: self.cardinalities[f] for f in item_side},
                                        self.field_dim, embedding_init=XAVIER) \
            if item_side else None
        self.user_tower = MLP(tuple(self.hidden), out_features=self.embed_dim,
                              dropout=self.dropout)
        self.item_tower = MLP(tuple(self.hidden), out_features=self.embed_dim,
                              dropout=self.dropout)

    def user_vectors(self, users, *, train: bool = False):
        parts = [self.user(_drop_ids(self, users["user_id"], self.id_dropout, train)),
                 self.item(users["history"], users["history/mask"])]
        if self.user_side is not None:
            side = self.user_side({f: users[f] for f in self.user_fields})
            parts += [side[f] for f in self.user_fields]
        u = self.user_tower(jnp.concatenate(parts, axis=-1), train=train)
        return _l2_normalize(u) / self.temperature

    def item_vectors(self, items, *, train: bool = False):
        parts = [self.item(_drop_ids(self, items["item_id"], self.id_dropout, train))]
        if self.item_side is not None:
            side = self.item_side({f: items[f] for f in (*self.item_fields,
                                                          *self.item_multi_fields)},
                                  {f: items[f"{f}/mask"] for f in self.item_multi_fields})
            parts += [side[f] for f in (*self.item_fields, *self.item_multi_fields)]
        return _l2_normalize(self.item_tower(jnp.concatenate(parts, axis=-1), train=train))


class SASRec(Recommender):
    """Self-attentive sequential recommendation: the user is the transformer's output at the
    latest history item; scores are its dot products with the item table that also embeds the
    history (shared input/output embedding).

    Inputs are the item ids with learned recency positions (0 = the latest item, so the newest
    items share positions whatever the history length), LayerNorm and dropout, then
    :class:`~mlsd_jax.models.layers.TransformerEncoder` over the history with padding masked.
    Each training example predicts one item from the items before it and only the latest
    position is read (RecBole's SASRec training), so attending both ways inside the history
    leaks nothing; the shared attention takes no causal mask, which SASRec's original
    every-position loss would need. An empty history reads a learned vector (cold start).
    """

    cardinalities: Mapping[str, int]
    history_len: int = 50
    embed_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    mlp_dim: int = 256
    dropout: float = 0.2
    attention_dropout: float = 0.2

    uses_user_id: ClassVar[bool] = False
    uses_history: ClassVar[bool] = True
    default_loss: ClassVar[str] = "softmax"

    def setup(self):
        self.item = _table(self.cardinalities["item_id"], self.embed_dim)
        self.position = Embedding(self.history_len, self.embed_dim,
                                  embedding_init=nn.initializers.normal(0.02))
        self.input_norm = layer_norm()
        self.input_dropout = nn.Dropout(self.dropout)
        self.encoder = TransformerEncoder(self.num_layers, self.num_heads, self.mlp_dim,
                                          self.dropout, self.attention_dropout)
        self.empty = self.param("empty_history", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("embed",)), (self.embed_dim,))

    def user_vectors(self, users, *, train: bool = False):
        ids, mask = users["history"], users["history/mask"]
        recency = jnp.cumsum(mask[:, ::-1], axis=1)[:, ::-1] - 1
        x = self.item(ids) + self.position(jnp.where(mask, recency, 0))
        x = self.input_dropout(self.input_norm(x), deterministic=not train)
        h = self.encoder(x, mask, train=train)
        last = jnp.argmax(jnp.where(mask, jnp.arange(mask.shape[1])[None, :], -1), axis=1)
        out = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
        return jnp.where(jnp.any(mask, axis=1, keepdims=True), out, self.empty)

    def item_vectors(self, items, *, train: bool = False):
        return self.item(items["item_id"])

