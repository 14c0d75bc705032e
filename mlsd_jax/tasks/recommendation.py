"""Top-k recommendation from implicit feedback (MovieLens), measured as the field measures it.

Every interaction is a positive (no rating threshold). ``data.protocol`` picks the split and
the evaluation, and names every metric key (``valid/full/ndcg@10``, ``test/loo99/hr@10``,
``test/seq/ndcg@10``); protocols are never mixed in one key:

``full``  (``recommendation/data=full``, the default) RecBole's general-recommendation setting:
    a seeded random 8:1:1 split of each user's interactions (``RS``, ``group_by user``,
    ``order RO``); every catalogue item is ranked, the user's known items masked (train items
    for valid, train + valid for test); Recall, MRR, NDCG, Hit, Precision @10; early stopping
    on ``valid/full/mrr@10`` after 10 evaluations without improvement.
``loo99`` (``recommendation/data=loo``) the NCF protocol: time-ordered leave-one-out (latest
    interaction test, the one before valid); the positive is ranked among 99 negatives drawn
    once per user by a seeded generator, never items the user interacted with; HR, NDCG, MRR @10.
``seq``   (``recommendation/data=seq``) time-ordered leave-last-out with full ranking over all
    items, the history (train items; train + valid for test) masked; Hit, NDCG, MRR @10.

``task.companions`` (default ``[loo]``) names further data options the run also trains a model
for, each on its own split (``<run dir>/<option>/`` with its own results.json, early stopping
on its own validation split, no export), before the main model; their metrics join this run's
under their protocol's names (constants in this run's validation curve, never its target;
``timings.data_s`` includes them). So the default run reports RecBole's full ranking and the
NCF protocol, each from a model trained on that protocol's split. A task built outside a run
(``tasks.build`` alone, no run directory) skips its companions with a note. The popularity baseline (training-split counts) is scored by the
same evaluator next to the model: ``<split>/<protocol>/popularity/<metric>``.

Features: a :class:`~mlsd_jax.features.FeatureSpec` fitted on the training interactions (user
and item vocabularies with an OOV bucket; side fields: age and year bucketed by training
quantiles, gender, occupation, genres multi-valued) plus the history, item ids read through the
item vocabulary. The exported ``serving_default`` takes raw ids (``user_id`` [batch], side
fields and ``history`` [batch, history] where the model reads them, candidate ``item_id``
[batch, candidates]) and returns ``scores``; factorised models also export ``user_embedding``
and ``item_embedding`` for ANN serving. Unseen ids read the OOV rows; item side fields of a
candidate come from the fitted item table (empty for an unseen item).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mlsd_jax.data import recsys as rs
from mlsd_jax.errors import check
from mlsd_jax.metrics.topk import FULL_METRICS, TopKMetrics
from mlsd_jax.models.recsys import OOV_ID
from mlsd_jax.tasks.base import Serving, Signature, Task
from mlsd_jax.tasks.ctr import bounded_rows

PROTOCOLS = {"full": ("full", FULL_METRICS), "loo99": ("sampled", ("hr", "ndcg", "mrr")),
             "seq": ("full", ("hit", "ndcg", "mrr"))}
# Keys of a data option that define its protocol; a companion keeps the others from the run.
PROTOCOL_KEYS = ("name", "protocol", "ratios", "eval_negatives", "eval_negatives_seed")
FIELD_KINDS = ("categorical", "numeric", "multi")

REFERENCES = {
    "full": {"source": "RecBole docs, BPR on ml-100k with RS 8:1:1 and full ranking, embedding "
                       "64, lr 1e-3: 'bpr' is the test result of the quick-start run in "
                       "get_started/started/general.rst (one run, seed 2020); 'bpr_tuning_doc' "
                       "is the test result of the best parameters (embedding 64, lr 0.001) of "
                       "the hyper-tuning example in user_guide/usage/parameter_tuning.rst",
             "bpr": {"recall@10": 0.2523, "mrr@10": 0.4855, "ndcg@10": 0.2920, "hit@10": 0.7953},
             "bpr_tuning_doc": {"recall@10": 0.2368, "mrr@10": 0.4519, "ndcg@10": 0.2768,
                                "hit@10": 0.7614}},
    "seq": {"source": "RecBole sequential ml-100k (GRU4Rec); RecBole does not mask the history "
                      "in sequential full ranking, so the figure is a reference only",
            "gru4rec": {"hit@10": 0.1103, "ndcg@10": 0.0513}},
}


# ------------------------------------------------------------------------------ feature layout
@dataclasses.dataclass(frozen=True)
class FeatureView:
    """Encoded inputs -> the model's id dicts (numbers bucketed with the fitted consts).

    ``user_fields`` / ``item_fields``: ``{name: kind}`` of the side fields present in the data;
    ``flags``: what the model reads (``uses_user_id``, ``uses_history``, ...).
    """

    user_fields: Mapping[str, str]
    item_fields: Mapping[str, str]
    numerics: Mapping[str, Any]
    uses_user_features: bool
    uses_item_features: bool

    def _bucket(self, consts, name, x):
        return self.numerics[name].apply(consts["features"], {name: x})[f"{name}/bucket"]

    def users(self, consts, enc) -> dict:
        out = {k: enc[k] for k in ("user_id", "history", "history/mask") if k in enc}
        if self.uses_user_features:
            for f, kind in self.user_fields.items():
                out[f] = self._bucket(consts, f, enc[f]) if kind == "numeric" else enc[f]
        return out

    def items_by_id(self, consts, ids) -> dict:
        """Items as ids; their side fields from the fitted item table (``consts["items"]``)."""
        ids = jnp.asarray(ids)
        out = {"item_id": ids}
        if self.uses_item_features and self.item_fields:
            table = consts["items"]
            rows = next(iter(table.values())).shape[0]
            safe = jnp.where((ids >= 0) & (ids < rows), ids, OOV_ID)
            for f, kind in self.item_fields.items():
                out[f] = jnp.take(jnp.asarray(table[f]), safe, axis=0)
                if kind == "multi":
                    out[f"{f}/mask"] = out[f] > 0
        return out

    def items(self, consts, enc) -> dict:
        """Items with the side fields a client sent (``item_embedding``)."""
        out = {"item_id": enc["item_id"]}
        if self.uses_item_features:
            for f, kind in self.item_fields.items():
                if kind == "numeric":
                    out[f] = self._bucket(consts, f, enc[f])
                else:
                    out[f] = enc[f]
                    if kind == "multi":
                        out[f"{f}/mask"] = enc[f"{f}/mask"]
        return out


def _fields(data_cfg, key: str) -> dict[str, str]:
    fields = dict(data_cfg.get(key) or {})
    for name, kind in fields.items():
        check(kind in FIELD_KINDS, f"data.{key}.{name}", kind, f"one of {list(FIELD_KINDS)}")
    return fields


def _feature_spec(data_cfg, user_fields, item_fields):
    from mlsd_jax.features import Categorical, FeatureSpec, MultiCategorical, Numeric

    buckets = int(data_cfg.get("numeric_buckets", 10))
    feats = [Categorical("user_id", num_oov=1), Categorical("item_id", num_oov=1)]
    for name, kind in {**user_fields, **item_fields}.items():
        if kind == "categorical":
            feats.append(Categorical(name))
        elif kind == "numeric":
            feats.append(Numeric(name, buckets=buckets))
        else:
            feats.append(MultiCategorical(name, sep="|",
                                          max_len=int(data_cfg.get("multi_max_len", 8))))
    return FeatureSpec(feats)


def _with_history(spec, history_len: int):
    """The fitted spec plus ``history``: item ids read through the item vocabulary."""
    from mlsd_jax.features import FittedFeatureSpec, Sequence
    from mlsd_jax.features.encoders import FittedSequence

    items = next(f for f in spec.fitted if f.spec.name == "item_id")
    seq = Sequence("history", max_len=history_len, keep="last", num_oov=1)
    return FittedFeatureSpec([*spec.fitted, FittedSequence(seq, items.ids)])


def _fitted(spec) -> dict:
    return {f.spec.name: f for f in spec.fitted}


def _layout(cfg, features):
    """Model class, fitted spec, view, cardinalities and constructor arguments (no data)."""
    import hydra

    from mlsd_jax.features import FittedFeatureSpec

    spec = FittedFeatureSpec.from_json(features["spec"])
    fitted = _fitted(spec)
    model_cls = hydra.utils.get_class(cfg["model"]["_target_"])
    user_fields, item_fields = dict(features["user_fields"]), dict(features["item_fields"])
    card = spec.cardinalities
    cards = {"user_id": card["user_id"], "item_id": card["item_id"]}
    for f, kind in {**user_fields, **item_fields}.items():
        cards[f] = card[f"{f}/bucket" if kind == "numeric" else f]
    view = FeatureView(user_fields, item_fields,
                       {f: fitted[f] for f, k in {**user_fields, **item_fields}.items()
                        if k == "numeric"},
                       model_cls.uses_user_features, model_cls.uses_item_features)
    names = {f.name for f in dataclasses.fields(model_cls)}
    extra = {"user_fields": tuple(user_fields),
             "item_fields": tuple(f for f, k in item_fields.items() if k != "multi"),
             "item_multi_fields": tuple(f for f, k in item_fields.items() if k == "multi"),
             "history_len": fitted["history"].spec.max_len}
    extra = {k: v for k, v in extra.items() if k in names}
    return model_cls, spec, view, cards, extra


# ------------------------------------------------------------------------------ feature paths
def forward(apply, consts, inputs, *, train: bool, view: FeatureView, needs: str):
    """Training forward: the outputs the loss reads (``needs``; see ``mlsd_jax.models.recsys``)."""
    users = view.users(consts, inputs)
    if needs == "candidates":
        ids = jnp.concatenate([inputs["item_id"][:, None], inputs["negatives"]], axis=1)
        return {"scores": apply(users, view.items_by_id(consts, ids), train=train)}
    if needs == "in_batch":
        ids = inputs["item_id"]
        return {"user": apply(users, train=train, method="user_vectors"),
                "item": apply(view.items_by_id(consts, ids), train=train, method="item_vectors"),
                "item_log_q": jnp.take(jnp.asarray(consts["item_log_q"]), ids)}
    ids = jnp.arange(consts["item_log_q"].shape[0])
    return {"scores": apply(users, view.items_by_id(consts, ids), train=train,
                            method="catalogue_scores")}


def score_candidates(apply, consts, inputs, view: FeatureView):
    """``[B, C]`` scores of each user's candidate item ids ``inputs["item_id"]`` ([B, C])."""
    return apply(view.users(consts, inputs), view.items_by_id(consts, inputs["item_id"]))


def score_catalogue(apply, consts, inputs, item_ids, view: FeatureView):
    """``[B, I]`` scores of each user against the catalogue's item ids ``item_ids`` ([I])."""
    return apply(view.users(consts, inputs), view.items_by_id(consts, item_ids),
                 method="catalogue_scores")


def _bind(model, variables):
    def apply(*args, method=None, **kwargs):
        return model.apply(variables, *args, method=method, **kwargs)
    return apply


# -------------------------------------------------------------------------------- serving
def _ids_np(ids_map, raw) -> np.ndarray:
    from mlsd_jax.features.columns import string_values

    raw = np.asarray(raw, dtype=object)
    flat = string_values(raw.reshape(-1), f"input 'item_id' {raw.shape}")
    return ids_map.ids_np(flat).reshape(raw.shape)


def _signature(spec, names, *, candidates: bool, predict, outputs) -> Signature:
    """A signature over the raw columns ``names`` (+ candidate ``item_id`` [batch, candidates])."""
    fitted = _fitted(spec)
    raw = spec.raw_signature
    inputs = {n: raw[n] for n in names}
    encoded = {k: v for n in names for k, v in fitted[n].encoded_signature().items()}
    if candidates:
        inputs["item_id"] = (("batch", "candidates"), np.str_)
        encoded["item_id"] = (("batch", "candidates"), np.int32)
    item_ids = fitted["item_id"].ids

    def encode_np(x):
        out = {k: v for n in names for k, v in fitted[n].encode_np({n: x[n]}).items()}
        if candidates:
            out["item_id"] = _ids_np(item_ids, x["item_id"])
        return out

    def encode_tf(x):
        tables = spec.tf_module().tables
        out = {k: v for n in names for k, v in fitted[n].encode_tf({n: x[n]}, tables).items()}
        if candidates:
            out["item_id"] = item_ids.ids_tf(x["item_id"], tables.get("item_id"))
        return out

    return Signature(inputs=inputs, encoded=encoded, outputs=outputs, predict=predict,
                     encode_np=encode_np, encode_tf=encode_tf, tf_module=spec.tf_module)


def _user_columns(model_cls, view) -> list[str]:
    names = ["user_id"] if model_cls.uses_user_id else []
    if model_cls.uses_user_features:
        names += list(view.user_fields)
    if model_cls.uses_history:
        names.append("history")
    return names


def serving(cfg: Mapping[str, Any], features: Mapping[str, Any]) -> Serving:
    """Model, training forward and export signatures from the config and fitted features."""
    import hydra

    model_cls, spec, view, cards, extra = _layout(cfg, features)
    model = hydra.utils.instantiate(cfg["model"], cardinalities=cards, **extra)
    loss = hydra.utils.instantiate(cfg["loss"]).resolve(model_cls)
    fwd = functools.partial(forward, view=view, needs=loss.needs)
    users = _user_columns(model_cls, view)
    sigs = {"serving_default": _signature(
        spec, users, candidates=True,
        predict=lambda apply, consts, x: {"scores": score_candidates(apply, consts, x, view)},
        outputs={"scores": "float32 [batch, candidates]: higher = recommend first"})}
    if model_cls.factorised:
        sigs["user_embedding"] = _signature(
            spec, users, candidates=False,
            predict=lambda apply, consts, x: {"embedding": apply(
                view.users(consts, x), method="user_vectors")},
            outputs={"embedding": "float32 [batch, dim]: score = user . item embedding"})
        items = ["item_id"] + (list(view.item_fields) if model_cls.uses_item_features else [])
        sigs["item_embedding"] = _signature(
            spec, items, candidates=False,
            predict=lambda apply, consts, x: {"embedding": apply(
                view.items(consts, x), method="item_vectors")},
            outputs={"embedding": "float32 [batch, dim]: the item's vector for ANN search"})
    return Serving(model=model, forward=fwd, signatures=sigs)


# ----------------------------------------------------------------------------------- data
def _side_values(table: Mapping[str, object], ids: np.ndarray, kind: str) -> np.ndarray:
    """Side field values for raw ``ids`` as raw client columns (strings / float32)."""
    if kind == "numeric":
        out = np.full(len(ids), np.nan, np.float32)
        for j, i in enumerate(ids):
            try:
                out[j] = float(table.get(i, "nan"))
            except (TypeError, ValueError):
                pass
        return out
    values = [table.get(i, "") for i in ids]
    if kind == "multi":
        values = ["|".join(v) if isinstance(v, (tuple, list)) else v for v in values]
    return np.asarray([str(v) for v in values], dtype=str)


def _buckets(fitted_numeric, x: np.ndarray) -> np.ndarray:
    """NumPy twin of the fitted bucket ids: 0 for missing, else ``1 + #{boundaries <= x}``."""
    bounds = np.asarray(fitted_numeric.boundaries, np.float32)
    ids = 1 + np.sum(x[..., None] >= bounds, axis=-1)
    return np.where(np.isnan(x), 0, ids).astype(np.int32)


@dataclasses.dataclass
class _Split:
    """One evaluation split of the protocol: users, model inputs and what to rank."""

    users: np.ndarray            # [n] user indices with a positive in the split
    inputs: dict                 # user model inputs [n, ...]
    positives: rs.UserItems | None = None
    known: rs.UserItems | None = None
    candidates: np.ndarray | None = None  # [n, 1 + negatives] catalogue indices (loo99)


def _eval_batches(split: _Split, batch_size: int, item_model: np.ndarray):
    """Batches of the split's users (this process's share; the same number of batches on every
    process), the last one padded with weight-0 rows."""
    n_proc, proc = jax.process_count(), jax.process_index()
    local = batch_size // n_proc
    mine = np.arange(len(split.users))[proc::n_proc]
    for b in range(-(-len(split.users) // batch_size)):
        rows = mine[b * local:(b + 1) * local]
        weight = np.concatenate([np.ones(len(rows)), np.zeros(local - len(rows))])
        rows = np.concatenate([rows, np.zeros(local - len(rows), np.int64)]).astype(np.int64)
        users = split.users[rows]
        batch = {k: v[rows] for k, v in split.inputs.items()}
        if split.candidates is not None:
            batch["candidates"] = split.candidates[rows]
            batch["item_id"] = item_model[split.candidates[rows]]
        else:
            batch["labels"] = split.positives.dense(users)
            batch["exclude"] = split.known.dense(users)
        batch["weight"] = weight.astype(np.float32)
        yield batch


@functools.lru_cache(maxsize=4)
def _read_movielens(path: str | None, stamp: tuple):
    from mlsd_jax.data.movielens import load_movielens

    return load_movielens(path)


def _movielens(path):
    """MovieLens from ``path`` (None: the embedded ML-100k), parsed once per process and file
    version (size and modification time)."""
    if path is None:
        return _read_movielens(None, ())
    st = Path(path).stat() if Path(path).exists() else None
    return _read_movielens(str(path), (st.st_size, st.st_mtime_ns) if st else ())


def _workdir(cfg):
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.select(cfg, "workdir", throw_on_resolution_failure=False)
    return cfg.get("workdir")


def build_recommendation_task(cfg: Mapping[str, Any]) -> Task:
    import hydra

    data_cfg, trainer_cfg, task_cfg = cfg["data"], cfg["trainer"], cfg["task"]
    companion_list = [str(n) for n in (task_cfg.get("companions") or [])
                      if n != data_cfg.get("name")]
    if companion_list and not _workdir(cfg):
        print(f"[recommendation] task.companions={companion_list} skipped: companions train in "
              "the run directory, and this task is built outside a run (experiments.run and "
              "mlsd_jax.experiment.run set one)", file=sys.stderr, flush=True)
        companion_list = []
    protocol = data_cfg["protocol"]
    check(protocol in PROTOCOLS, "data.protocol", protocol, f"one of {sorted(PROTOCOLS)}")
    history_len = int(data_cfg.get("history_len", 50))
    check(history_len >= 1, "data.history_len", history_len, "an integer >= 1")
    ks = tuple(int(k) for k in task_cfg.get("topk", [10]))
    check(len(ks) > 0 and min(ks) >= 1, "task.topk", list(ks), "cut-offs >= 1")

    ml = _movielens(data_cfg.get("path"))
    inter = rs.index_interactions(ml.user_id, ml.item_id, ml.timestamp)
    if protocol == "full":
        parts = rs.ratio_split(inter, list(data_cfg.get("ratios", [0.8, 0.1, 0.1])),
                               int(data_cfg.get("seed", 0)))
    else:
        parts = rs.leave_last_out(inter)
    for s in rs.SPLITS:
        if not len(parts[s]):
            raise rs.RecsysDataError(f"the {s} split is empty ({protocol} protocol on "
                                     f"{ml.source}); too few interactions per user")

    # Side fields the data has; those it lacks are left out (recorded in info).
    wanted_user, wanted_item = _fields(data_cfg, "user_fields"), _fields(data_cfg, "item_fields")
    user_fields = {f: k for f, k in wanted_user.items() if ml.users.get(f)}
    item_fields = {f: k for f, k in wanted_item.items() if ml.items.get(f)}
    dropped = (sorted(set(wanted_user) - set(user_fields))
               + sorted(set(wanted_item) - set(item_fields)))
    if dropped:
        print(f"[recommendation] {ml.source} has no side field(s) {dropped}; they are left out",
              file=sys.stderr, flush=True)
    user_cols = {"user_id": inter.user_ids}
    user_cols.update({f: _side_values(ml.users[f], inter.user_ids, k)
                      for f, k in user_fields.items()})
    item_cols = {"item_id": inter.item_ids}
    item_cols.update({f: _side_values(ml.items[f], inter.item_ids, k)
                      for f, k in item_fields.items()})
    # Fitted on the training split: id vocabularies over its interactions (most frequent first),
    # side fields over its users and items (one row each).
    train = parts["train"]
    train_users, train_items = np.unique(inter.user[train]), np.unique(inter.item[train])
    train_cols = {"user_id": inter.user_ids[inter.user[train]],
                  "item_id": inter.item_ids[inter.item[train]],
                  **{f: user_cols[f][train_users] for f in user_fields},
                  **{f: item_cols[f][train_items] for f in item_fields}}
    spec = _with_history(_feature_spec(data_cfg, user_fields, item_fields).fit(train_cols),
                         history_len)
    features = {"spec": spec.to_json(), "user_fields": user_fields, "item_fields": item_fields}
    model_cls, spec, view, cards, extra = _layout(cfg, features)
    fitted = _fitted(spec)
    srv = serving(cfg, features)
    loss = hydra.utils.instantiate(cfg["loss"]).resolve(model_cls)

    # Encoded columns per user and per catalogue item; the item side table by model id (rows of
    # ids outside the vocabulary stay empty: no genres, missing year).
    user_enc = {k: v for n in user_cols for k, v in fitted[n].encode_np({n: user_cols[n]}).items()}
    item_model = fitted["item_id"].encode_np(item_cols)["item_id"].astype(np.int32)
    rows_v = fitted["item_id"].ids.cardinality
    known = item_model > OOV_ID
    item_table = {}
    for f, k in item_fields.items():
        enc = fitted[f].encode_np({f: item_cols[f]})[f]
        if k == "numeric":
            enc = _buckets(fitted[f], enc)
        table = np.zeros((rows_v,) + enc.shape[1:], np.int32)
        table[item_model[known]] = enc[known]
        item_table[f] = table
    train_counts = np.bincount(item_model[inter.item[train]], minlength=rows_v)
    log_q = np.log(np.maximum(train_counts, 1) / len(train)).astype(np.float32)
    consts = {"features": spec.consts, "items": item_table, "item_log_q": log_q}

    # ---- training stream
    seqs = rs.user_items(inter, train)
    t_users = inter.user[train]
    t_pos = rs.position_in_user(inter, train, seqs)
    negatives = loss.negatives
    user_keys = [k for k in user_enc if k == "user_id" or
                 (model_cls.uses_user_features and k in user_fields)]

    def history(seq_data, users, ends, skip=None):
        items, mask = rs.history_windows(seq_data, users, ends, history_len, skip)
        return {"history": np.where(mask, item_model[np.maximum(items, 0)], 0).astype(np.int32),
                "history/mask": mask}

    def make_batch(rows, rng):
        u = t_users[rows]
        batch = {k: user_enc[k][u] for k in user_keys}
        if model_cls.uses_history:
            if protocol == "full":  # random split: every other training item of the user
                batch.update(history(seqs, u, seqs.counts[u], t_pos[rows]))
            else:                   # time order: the items before this one
                batch.update(history(seqs, u, t_pos[rows]))
        batch["item_id"] = item_model[inter.item[train[rows]]]
        if negatives:
            batch["negatives"] = item_model[rs.sample_negatives(rng, u, negatives,
                                                                inter.num_items, seqs)]
        return batch

    batch_size, eval_batch = int(trainer_cfg["batch_size"]), int(trainer_cfg["eval_batch_size"])

    def train_batches(seed: int, start_step: int):
        return rs.train_stream(len(train), batch_size, seed, start_step, make_batch)

    # ---- evaluation splits
    everything = rs.user_items(inter, np.arange(len(inter)))
    splits: dict[str, _Split] = {}
    for name, known_rows in (("valid", train), ("test", np.concatenate([train, parts["valid"]]))):
        positives = rs.user_items(inter, parts[name])
        known = rs.user_items(inter, known_rows)
        users = np.flatnonzero(positives.counts > 0)
        inputs = {k: user_enc[k][users] for k in user_keys}
        if model_cls.uses_history:
            inputs.update(history(known, users, known.counts[users]))
        split = _Split(users, inputs, positives, known)
        if protocol == "loo99":
            num = int(data_cfg.get("eval_negatives", 99))
            seed = int(data_cfg.get("eval_negatives_seed", 0)) + (name == "test")
            negs = rs.eval_negatives(seed, users, num, inter.num_items, everything)
            split.candidates = np.concatenate([positives.items[positives.indptr[users]][:, None],
                                               negs], axis=1)
        splits[name] = split
    eval_splits = {s: functools.partial(_eval_batches, sp, eval_batch, item_model)
                   for s, sp in splits.items()}

    kind, names = PROTOCOLS[protocol]
    metric = TopKMetrics(kind=kind, ks=ks, names=names)
    popularity = np.bincount(inter.item[train], minlength=inter.num_items).astype(np.float32)
    companions = _companions(cfg, data_cfg, companion_list)
    evaluator = _evaluator(srv.model, view, protocol, metric, eval_splits, item_model,
                           popularity, companions)

    target = f"{protocol}/{task_cfg.get('valid_metric', 'mrr@10')}"
    check(target.split("/", 1)[1] in {f"{n}@{k}" for n in names for k in ks},
          "task.valid_metric", task_cfg.get("valid_metric"),
          f"a metric of protocol {protocol}: {[f'{n}@{k}' for n in names for k in ks]}")
    example = next(train_batches(int(cfg.get("seed", 0)), 0))
    info = {"dataset": ml.source, "interactions": len(inter), "users": inter.num_users,
            "items": inter.num_items, "protocol": protocol,
            "split": _describe_protocol(protocol, data_cfg),
            "catalogue_items": inter.num_items,
            "items_unseen_in_train": int(np.sum(item_model == OOV_ID)),
            **{f"{s}_interactions": int(len(parts[s])) for s in rs.SPLITS},
            **{f"{s}_users": int(len(sp.users)) for s, sp in splits.items()},
            "user_fields": user_fields, "item_fields": item_fields, "fields_left_out": dropped,
            "loss": type(loss).__name__, "model": model_cls.__name__,
            "companions": companion_list, "reference": REFERENCES.get(protocol, {}),
            "fingerprint": _fingerprint(inter),
            # The model server's answer when the model errors or misses its deadline: each
            # candidate scored by its training-split count (the 1000 most popular items; any
            # other scores 0), i.e. the candidates ranked as the popularity baseline ranks them.
            "serving_fallback": {"scores": {"by_input": "item_id", "default": 0.0, "table": {
                str(inter.item_ids[i]): float(popularity[i])
                for i in np.argsort(-popularity, kind="stable")[:1000] if popularity[i] > 0}}}}
    def reference_inputs():
        """The valid users as a client sends them (the signature takes the inputs it needs):
        id and side fields, ``history`` (their last ``history_len`` known items, ``""``
        padding) and one candidate, the first item they went on to pick in the split, so
        ``scores`` is that item's score. No labels: a row's one candidate is a positive."""
        return _reference_users(splits["valid"], inter, user_cols, history_len)

    return Task(
        name="recommendation", model=srv.model, consts=consts, forward=srv.forward,
        loss_fn=loss, metrics={}, example_weight=lambda batch: batch["weight"],
        train_batches=train_batches, eval_splits=eval_splits, example_batch=example,
        input_keys=tuple(k for k in example if k != "weight"), signatures=srv.signatures,
        serving="mlsd_jax.tasks.recommendation:serving", features=features,
        serving_examples=_serving_examples(srv.signatures, view, inter, seqs, user_cols,
                                           item_cols, history_len),
        evaluator=evaluator, target_metric=target, target_mode="max", info=info,
        reference_inputs=reference_inputs)


def _describe_protocol(protocol: str, data_cfg) -> str:
    if protocol == "full":
        ratios = list(data_cfg.get("ratios", [0.8, 0.1, 0.1]))
        seed = int(data_cfg.get("seed", 0))
        return (f"RecBole RS {ratios}, group_by user, order RO (seed {seed}); full ranking of "
                "every catalogue item, known items masked")
    if protocol == "loo99":
        seed = int(data_cfg.get("eval_negatives_seed", 0))
        return (f"time-ordered leave-one-out (latest test, previous valid); the positive among "
                f"{int(data_cfg.get('eval_negatives', 99))} sampled negatives drawn once (seed "
                f"{seed} for valid, {seed + 1} for test), never items of the user")
    return ("time-ordered leave-last-out; full ranking of every catalogue item, the history "
            "(train, + valid for test) masked")


def _fingerprint(inter: rs.Interactions) -> str:
    from mlsd_jax.export.bundle import fingerprint

    return fingerprint(inter.user, inter.item, inter.timestamp)


# ------------------------------------------------------------------------------- evaluation
def _evaluator(model, view, protocol, metric, eval_splits, item_model, popularity, companions):
    """``evaluator(trainer, state, split)``: the model and the popularity baseline on ``split``
    (all users x all items on device for full ranking, or the sampled candidates), plus the
    companions' metrics of that split."""
    sampled = protocol == "loo99"

    def step(variables, consts, batch, catalogue):
        apply = _bind(model, variables)
        if sampled:
            scores = score_candidates(apply, consts, batch, view)
        else:
            scores = score_catalogue(apply, consts, batch, catalogue, view)
        return metric.update({"scores": scores}, batch, batch["weight"])

    jitted = jax.jit(step)
    update = jax.jit(metric.update)
    baseline: dict[str, dict] = {}

    def popularity_metrics(split: str) -> dict:
        if split not in baseline:
            acc = None
            for batch in eval_splits[split]():
                if sampled:
                    scores = popularity[batch["candidates"]]
                else:
                    scores = np.broadcast_to(popularity[None], batch["labels"].shape)
                acc = metric.merge(acc, jax.device_get(
                    update({"scores": scores}, batch, batch["weight"])))
            baseline[split] = {f"{protocol}/popularity/{k}": v
                               for k, v in metric.compute(acc).items()}
        return baseline[split]

    def evaluator(trainer, state, split):
        from mlsd_jax import sharding as shd

        catalogue = jax.device_put(item_model, shd.replicated(trainer.mesh))
        acc = None
        for batch in eval_splits[split]():
            out = jitted(state.variables, state.consts, trainer.put_batch(batch), catalogue)
            acc = metric.merge(acc, jax.device_get(out))
        values = {f"{protocol}/{k}": v for k, v in metric.compute(acc).items()}
        return {**values, **popularity_metrics(split), **companions.get(split, {})}

    return evaluator


# ------------------------------------------------------------------------------- companions
def _companions(cfg, data_cfg, names) -> dict[str, dict[str, float]]:
    """Trains the model of each companion data option in ``<run dir>/<option>/``; returns their
    metrics by split (``{"valid": {"loo99/hr@10": ...}, "test": {...}}``)."""
    from omegaconf import OmegaConf, open_dict

    from mlsd_jax.experiment import config_dir, run

    out: dict[str, dict[str, float]] = {}
    for name in names:
        option = Path(config_dir()) / "recommendation" / "data" / f"{name}.yaml"
        if not option.exists():
            valid = sorted(p.stem for p in option.parent.glob("*.yaml"))
            raise ValueError(f"task.companions: no data option {name!r}; valid: {valid}")
        plain = (OmegaConf.to_container(data_cfg, resolve=True) if OmegaConf.is_config(data_cfg)
                 else dict(data_cfg))
        shared = {k: v for k, v in plain.items() if k not in PROTOCOL_KEYS}
        sub = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)
                               if OmegaConf.is_config(cfg) else dict(cfg))
        workdir = Path(_workdir(cfg)) / name
        with open_dict(sub):
            sub.data = OmegaConf.merge(OmegaConf.load(option), shared)
            sub.task.companions = []
            sub.export.enabled = False
            sub.workdir = str(workdir)
        results = run(sub, workdir=workdir)
        for key, value in results["metrics"].items():
            split, rest = key.split("/", 1)
            out.setdefault(split, {})[rest] = value
    return out


def _reference_users(split: _Split, inter, user_cols, history_len: int) -> dict:
    """Raw ``serving_default`` inputs of (at most 20,000 of) a split's users; see
    ``reference_inputs`` in :func:`build_recommendation_task`."""
    users = split.users[bounded_rows(np.arange(len(split.users)))]
    out = {k: np.asarray(v[users]) for k, v in user_cols.items()}
    hist = [[str(inter.item_ids[i]) for i in split.known.of(int(u))[-history_len:]] for u in users]
    width = max(1, max((len(h) for h in hist), default=0))
    out["history"] = np.asarray([h + [""] * (width - len(h)) for h in hist], dtype=object)
    first = split.positives.items[split.positives.indptr[users]]
    out["item_id"] = np.asarray(inter.item_ids[first]).astype(str).astype(object)[:, None]
    return {k: (v.astype(object) if v.dtype.kind in "US" else v) for k, v in out.items()}


# ------------------------------------------------------------------------------- examples
def _serving_examples(signatures, view, inter, seqs, user_cols, item_cols,
                      history_len) -> dict:
    """Raw client inputs for the export check: six known users and two unseen ones, known and
    unseen candidate items."""
    users = np.arange(min(6, inter.num_users))
    raw_users = {k: list(v[users]) for k, v in user_cols.items()}
    for j in range(2):
        raw_users["user_id"].append(f"unseen-user-{j}")
        for f, kind in view.user_fields.items():
            raw_users[f].append(np.float32(30.0) if kind == "numeric" else
                                ("never-seen-value" if j else raw_users[f][0]))
    hist = [[str(inter.item_ids[i]) for i in seqs.of(u)[-history_len:]] for u in users]
    hist += [[str(inter.item_ids[0]), "unseen-item"], []]
    width = max(1, max(len(h) for h in hist))
    history = np.asarray([h + [""] * (width - len(h)) for h in hist], dtype=object)
    cands = [str(i) for i in inter.item_ids[:4]] + ["unseen-item"]
    n = len(raw_users["user_id"])
    base = {k: np.asarray(v, dtype=np.float32 if view.user_fields.get(k) == "numeric" else object)
            for k, v in raw_users.items()}
    base["history"] = history
    out = {}
    for name, sig in signatures.items():
        if name == "item_embedding":
            items = np.arange(min(7, inter.num_items))
            ex = {k: v[items] for k, v in item_cols.items()}
            ex["item_id"] = np.concatenate([ex["item_id"], ["unseen-item"]]).astype(object)
            for f, kind in view.item_fields.items():
                extra = np.float32(np.nan) if kind == "numeric" else "Drama|never-seen-genre"
                ex[f] = np.concatenate([ex[f], [extra]])
            out[name] = {k: ex[k] for k in sig.inputs}
            continue
        ex = {k: base[k] for k in sig.inputs if k in base}
        if "item_id" in sig.inputs:
            ex["item_id"] = np.asarray([cands] * n, dtype=object)
        out[name] = ex
    return out
