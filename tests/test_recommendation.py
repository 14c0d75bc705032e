"""Recommendation: splits, samplers, top-k metrics, models, losses, training and serving.

Splits and samplers are checked on the real MovieLens-100k; the metrics against a NumPy
transcription of RecBole's definitions; every model trains a step on 8 simulated devices through
``experiment.run``; serving takes raw id strings, unseen ids included.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax import tasks
from mlsd_jax.data import recsys as rs
from mlsd_jax.data.movielens import load_movielens
from mlsd_jax.experiment import run
from mlsd_jax.metrics.topk import TopKMetrics, full_ranking, sampled_ranking
from mlsd_jax.models import recsys as mr
from mlsd_jax.tasks.base import cast_inputs, predict_fn
from tests.utils import compose_config

MODELS = ["mf", "gmf", "ncf_mlp", "neumf", "two_tower", "sasrec"]


@pytest.fixture(scope="module")
def ml100k():
    ml = load_movielens()
    return ml, rs.index_interactions(ml.user_id, ml.item_id, ml.timestamp)


# ------------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("total,expected", [(20, [16, 2, 2]), (737, [591, 73, 73]),
                                            (5, [3, 1, 1]), (9, [7, 1, 1]), (2, [1, 0, 1])])
def test_ratio_split_counts_round_like_recbole(total, expected):
    # RecBole's Dataset._calcu_split_ids: later parts rounded down, a part with a share in
    # (0, 1) gets one item while the first part keeps more than one.
    assert rs.ratio_split_counts(total, [0.8, 0.1, 0.1]) == expected


def test_random_split_is_8_1_1_per_user_disjoint_and_seeded(ml100k):
    _, inter = ml100k
    parts = rs.ratio_split(inter, [0.8, 0.1, 0.1], seed=3)
    rows = np.concatenate([parts[s] for s in rs.SPLITS])
    assert len(rows) == len(inter) == len(np.unique(rows))  # disjoint and covering
    counts = {s: np.bincount(inter.user[parts[s]], minlength=inter.num_users) for s in rs.SPLITS}
    total = np.bincount(inter.user, minlength=inter.num_users)
    for u in range(inter.num_users):
        assert [counts[s][u] for s in rs.SPLITS] == rs.ratio_split_counts(total[u], [8, 1, 1])
    assert np.array_equal(parts["test"], rs.ratio_split(inter, [0.8, 0.1, 0.1], seed=3)["test"])
    other = rs.ratio_split(inter, [0.8, 0.1, 0.1], seed=4)["test"]
    assert len(other) == len(parts["test"]) and not np.array_equal(other, parts["test"])
    # Random order within a user: the test items are not simply the latest ones.
    latest = np.array([inter.timestamp[parts["test"]][inter.user[parts["test"]] == u].min()
                       >= inter.timestamp[parts["train"]][inter.user[parts["train"]] == u].max()
                       for u in range(50)])
    assert latest.mean() < 0.5


def test_leave_last_out_holds_out_the_latest_interactions(ml100k):
    _, inter = ml100k
    parts = rs.leave_last_out(inter)
    assert sum(len(p) for p in parts.values()) == len(inter)
    for s in ("valid", "test"):
        assert np.array_equal(np.sort(inter.user[parts[s]]), np.arange(inter.num_users))
    ts = inter.timestamp
    last_train = np.zeros(inter.num_users, np.int64)
    np.maximum.at(last_train, inter.user[parts["train"]], ts[parts["train"]])
    valid_ts = np.zeros(inter.num_users, np.int64)
    valid_ts[inter.user[parts["valid"]]] = ts[parts["valid"]]
    test_ts = np.zeros(inter.num_users, np.int64)
    test_ts[inter.user[parts["test"]]] = ts[parts["test"]]
    assert np.all(last_train <= valid_ts) and np.all(valid_ts <= test_ts)


def test_leave_last_out_breaks_timestamp_ties_by_file_order_and_keeps_short_users():
    inter = rs.index_interactions(["a", "a", "a", "a", "b", "b", "c"],
                                  ["1", "2", "3", "4", "1", "2", "1"],
                                  [5, 9, 9, 1, 3, 4, 7])
    parts = rs.leave_last_out(inter)
    assert parts["test"].tolist() == [2, 5] and parts["valid"].tolist() == [1]
    assert parts["train"].tolist() == [0, 3, 4, 6]  # b: train + test; c: train only


def test_duplicate_interactions_are_rejected():
    with pytest.raises(rs.RecsysDataError, match="user 'a' has item '1' 2 times"):
        rs.index_interactions(["a", "a"], ["1", "1"], [1, 2])


def test_history_windows_are_causal_or_skip_the_target():
    inter = rs.index_interactions(["u"] * 5, ["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5])
    seqs = rs.user_items(inter, np.arange(5))
    users = np.zeros(3, np.int64)
    items, mask = rs.history_windows(seqs, users, np.array([0, 2, 5]), 3)
    assert items.tolist() == [[-1, -1, -1], [0, 1, -1], [2, 3, 4]]
    assert mask.sum(1).tolist() == [0, 2, 3]
    items, _ = rs.history_windows(seqs, users, np.array([5, 5, 5]), 3, skip=np.array([4, 1, 0]))
    assert items.tolist() == [[1, 2, 3], [2, 3, 4], [2, 3, 4]]


# ------------------------------------------------------------------------------------ samplers
def test_training_negatives_are_never_training_positives(ml100k):
    _, inter = ml100k
    train = rs.ratio_split(inter, [0.8, 0.1, 0.1], seed=0)["train"]
    seqs = rs.user_items(inter, train)
    users = np.repeat(np.arange(inter.num_users), 50)
    negs = rs.sample_negatives(np.random.default_rng(0), users, 4, inter.num_items, seqs)
    assert negs.shape == (len(users), 4) and negs.min() >= 0 and negs.max() < inter.num_items
    assert not seqs.contains(users[:, None], negs).any()
    # Uniform over the rest: the heaviest user's negatives still cover most of the catalogue.
    assert len(np.unique(negs)) > 0.9 * inter.num_items


def test_eval_negatives_are_fixed_distinct_and_never_positives(ml100k):
    _, inter = ml100k
    everything = rs.user_items(inter, np.arange(len(inter)))
    users = np.arange(inter.num_users)
    negs = rs.eval_negatives(7, users, 99, inter.num_items, everything)
    assert negs.shape == (inter.num_users, 99)
    assert not everything.contains(users[:, None], negs).any()
    assert all(len(np.unique(row)) == 99 for row in negs)
    assert np.array_equal(negs, rs.eval_negatives(7, users, 99, inter.num_items, everything))
    assert not np.array_equal(negs, rs.eval_negatives(8, users, 99, inter.num_items, everything))


def test_a_user_with_every_item_has_no_negatives():
    inter = rs.index_interactions(["u", "u", "v"], ["a", "b", "a"], [1, 2, 3])
    seqs = rs.user_items(inter, np.arange(3))
    with pytest.raises(rs.RecsysDataError, match="interacted with all 2 items"):
        rs.sample_negatives(np.random.default_rng(0), np.array([0]), 1, 2, seqs)
    with pytest.raises(rs.RecsysDataError, match="the protocol needs 5 negatives"):
        rs.eval_negatives(0, np.array([1]), 5, 2, seqs)


# ------------------------------------------------------------------------------------- metrics
def recbole_reference(scores, labels, exclude, k):
    """RecBole's metrics.py (Hit, MRR, NDCG, Recall, Precision) in NumPy, per user."""
    scores = np.where(exclude, -np.inf, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    pos_index = np.take_along_axis(labels, order, axis=1)
    pos_len = labels.sum(1)
    out = {"hit": (np.cumsum(pos_index, 1) > 0)[:, -1].astype(float),
           "recall": pos_index.sum(1) / pos_len, "precision": pos_index.sum(1) / k}
    first = pos_index.argmax(1)
    out["mrr"] = np.where(pos_index[np.arange(len(first)), first], 1 / (first + 1), 0.0)
    ranks = np.arange(1, k + 1)
    dcg = np.sum(np.where(pos_index, 1 / np.log2(ranks + 1), 0), axis=1)
    idcg = np.array([np.sum(1 / np.log2(ranks[:min(n, k)] + 1)) for n in pos_len])
    out["ndcg"] = dcg / idcg
    return out


@pytest.mark.parametrize("k", [1, 5, 10])
def test_full_ranking_metrics_match_recbole_definitions(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(64, 300)).astype(np.float32)
    labels = rng.random((64, 300)) < rng.uniform(0.005, 0.1, size=(64, 1))
    labels[:, 0] = True  # at least one positive
    exclude = (rng.random((64, 300)) < 0.2) & ~labels
    exclude[:, 1] = True
    scores[:, 1] = 100.0  # an excluded item scored highest must never be recommended
    got = jax.jit(full_ranking, static_argnums=3)(scores, labels, exclude, (k,))
    want = recbole_reference(scores, labels, exclude, k)
    for name, values in want.items():
        np.testing.assert_allclose(np.asarray(got[f"{name}@{k}"]), values, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_sampled_ranking_counts_ties_against_the_positive():
    scores = jnp.asarray([[5.0, 1.0, 2.0, 3.0],     # rank 0
                          [2.0, 3.0, 2.0, 1.0],     # one higher, one tie -> rank 2
                          [0.0, 1.0, 2.0, 3.0]])    # rank 3
    got = sampled_ranking(scores, (1, 3))
    np.testing.assert_allclose(got["hr@1"], [1, 0, 0])
    np.testing.assert_allclose(got["hr@3"], [1, 1, 0])
    np.testing.assert_allclose(got["ndcg@3"], [1, 1 / np.log2(4), 0], rtol=1e-6)
    np.testing.assert_allclose(got["mrr@3"], [1, 1 / 3, 0], rtol=1e-6)


def test_topk_metric_merges_batches_and_skips_users_without_positives():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 50)).astype(np.float32)
    labels = rng.random((40, 50)) < 0.05
    labels[:5] = False  # no positives: not counted
    labels[5:, 3] = True
    exclude = np.zeros_like(labels)
    metric = TopKMetrics(kind="full", ks=(5, 10))
    update = jax.jit(metric.update)
    whole = metric.compute(metric.merge(None, update(
        {"scores": scores}, {"labels": labels, "exclude": exclude}, np.ones(40))))
    acc = None
    for lo in range(0, 40, 20):
        sl = slice(lo, lo + 20)
        acc = metric.merge(acc, update({"scores": scores[sl]},
                                       {"labels": labels[sl], "exclude": exclude[sl]},
                                       np.ones(20)))
    batched = metric.compute(acc)
    ref = recbole_reference(scores[5:], labels[5:], exclude[5:], 10)
    for name in ("recall", "ndcg", "mrr", "hit", "precision"):
        assert batched[f"{name}@10"] == pytest.approx(whole[f"{name}@10"], rel=1e-6)
        assert batched[f"{name}@10"] == pytest.approx(ref[name].mean(), rel=1e-5)


# -------------------------------------------------------------------------------------- losses
def test_in_batch_logits_subtract_log_q_and_mask_accidental_positives():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    q = np.array([0.4, 0.1, 0.4, 0.05, 0.05])
    users = np.array([0, 1, 2, 0, 3])      # rows 0 and 3: the same user
    items = np.array([10, 11, 10, 12, 13])  # rows 0 and 2: the same item
    weight = np.array([1, 1, 1, 1, 0.0])   # row 4 is padding
    got = np.asarray(jax.jit(mr.in_batch_logits)(u, v, np.log(q), users, items, weight))
    want = u @ v.T - np.log(q)[None, :]
    masked = np.zeros((5, 5), bool)
    masked[0, 2] = masked[2, 0] = masked[0, 3] = masked[3, 0] = True
    masked[:4, 4] = True
    np.testing.assert_allclose(got[~masked], want[~masked], rtol=1e-5)
    assert np.all(got[masked] <= -1e8)
    np.testing.assert_allclose(np.diag(got), np.diag(want), rtol=1e-5)  # labels never masked
    outputs = {"user": u, "item": v, "item_log_q": np.log(q)}
    batch = {"user_id": users, "item_id": items, "weight": weight}
    loss, _ = jax.jit(mr.InBatchSoftmaxLoss())(outputs, batch)
    logits = np.where(masked, -np.inf, want)
    per = np.log(np.exp(logits).sum(1)) - np.diag(want)
    assert float(loss) == pytest.approx(per[:4].mean(), rel=1e-5)
    plain, _ = jax.jit(mr.InBatchSoftmaxLoss(logq_correction=False))(outputs, batch)
    assert float(plain) != pytest.approx(float(loss))


def test_bpr_and_bce_losses():
    scores = jnp.asarray([[2.0, 0.0], [0.0, 1.0]])
    batch = {"weight": jnp.ones(2)}
    bpr, _ = mr.BPRLoss()({"scores": scores}, batch)
    assert float(bpr) == pytest.approx(np.mean(np.log1p(np.exp([-2.0, 1.0]))), rel=1e-6)
    bce, _ = mr.BCELoss(num_negatives=1)({"scores": scores}, batch)
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731
    assert float(bce) == pytest.approx(np.mean([(sp(-2) + sp(0)) / 2, (sp(0) + sp(1)) / 2]),
                                       rel=1e-6)


def test_full_softmax_loss_matches_numpy_over_the_whole_catalogue():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(4, 9)).astype(np.float32) * 3
    items = np.array([2, 8, 1, 5])           # row 2: the OOV row is a valid target
    weight = np.array([1.0, 2.0, 1.0, 0.0])  # row 3 is padding
    loss, _ = jax.jit(mr.SoftmaxLoss())({"scores": scores}, {"item_id": items, "weight": weight})
    z = scores[:, 1:].astype(np.float64)     # column 0 (padding id) never competes
    per = np.log(np.exp(z).sum(1)) - z[np.arange(4), items - 1]
    assert float(loss) == pytest.approx(np.sum(weight * per) / weight.sum(), rel=1e-5)
    # Every other item of the catalogue is in the denominator: raising any of them raises the
    # loss, a raised padding column changes nothing.
    bumped = scores.copy()
    bumped[:, 4] += 5.0
    more, _ = jax.jit(mr.SoftmaxLoss())({"scores": bumped}, {"item_id": items, "weight": weight})
    assert float(more) > float(loss) + 0.1
    bumped = scores.copy()
    bumped[:, 0] += 50.0
    same, _ = jax.jit(mr.SoftmaxLoss())({"scores": bumped}, {"item_id": items, "weight": weight})
    assert float(same) == pytest.approx(float(loss), rel=1e-6)


def test_mf_softmax_option_trains_mf_with_the_full_softmax_and_decays_its_tables():
    cfg = compose_config(["+task=recommendation", "recommendation/model=mf_softmax"])
    assert cfg.model._target_.endswith(".MF") and cfg.loss._target_.endswith(".SoftmaxLoss")
    assert cfg.optim.name == "adamw" and cfg.optim.weight_decay > 0
    assert cfg.optim.decay_params is None   # the embedding tables are decayed (MF has no other)
    # The loss stays the user's choice; the default model keeps RecBole's BPR setup.
    bpr = compose_config(["+task=recommendation", "recommendation/model=mf_softmax",
                          "recommendation/loss=bpr"])
    assert bpr.loss._target_.endswith(".BPRLoss")
    default = compose_config(["+task=recommendation"])
    assert default.loss._target_.endswith(".ModelLoss") and default.optim.name == "adam"
    assert default.optim.weight_decay == 0


# -------------------------------------------------------------------------------------- models
CARDS = {"user_id": 12, "item_id": 20, "age": 6, "gender": 4, "occupation": 5, "genres": 7,
         "year": 6}


@functools.lru_cache(maxsize=None)
def _built(name):
    """``(model, variables, jitted apply)``, shared by the tests (eager Flax calls and repeated
    compilations are slow on 8 simulated devices)."""
    model = _model(name)
    users, cands, _ = _inputs()
    variables = jax.jit(model.init)(jax.random.key(0), users, cands)
    return model, variables, jax.jit(model.apply, static_argnames=("method",))


def _model(name):
    small = {"embed_dim": 8}
    return {"mf": mr.MF(CARDS, **small), "gmf": mr.GMF(CARDS, **small),
            "ncf_mlp": mr.NCFMLP(CARDS, hidden=(16, 8), **small),
            "neumf": mr.NeuMF(CARDS, mlp_embed_dim=8, hidden=(16, 8), **small),
            "two_tower": mr.TwoTower(CARDS, user_fields=("age", "gender", "occupation"),
                                     item_fields=("year",), item_multi_fields=("genres",),
                                     hidden=(16,), **small),
            "sasrec": mr.SASRec(CARDS, history_len=5, num_layers=1, num_heads=2, mlp_dim=16,
                                **small)}[name]


def _inputs(b=4, c=3, history_len=5, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.arange(history_len)[None, :] < np.array([5, 2, 0, 3])[:b, None]
    users = {"user_id": rng.integers(2, 12, b), "age": rng.integers(0, 6, b),
             "gender": rng.integers(0, 4, b), "occupation": rng.integers(0, 5, b),
             "history": np.where(mask, rng.integers(2, 20, (b, history_len)), 0),
             "history/mask": mask}

    def items(shape):
        genres = rng.integers(0, 7, shape + (3,))
        return {"item_id": rng.integers(2, 20, shape), "year": rng.integers(0, 6, shape),
                "genres": genres, "genres/mask": genres > 0}

    return users, items((b, c)), items((20,))


@pytest.mark.parametrize("name", MODELS)
def test_model_shapes_and_catalogue_path_agree(name):
    model, variables, apply = _built(name)
    users, cands, catalogue = _inputs()
    scores = apply(variables, users, cands)
    assert scores.shape == (4, 3) and bool(jnp.all(jnp.isfinite(scores)))
    full = apply(variables, users, catalogue, method="catalogue_scores")
    assert full.shape == (4, 20) and bool(jnp.all(jnp.isfinite(full)))
    # The catalogue path scores what the candidate path scores (both used in evaluation).
    as_cands = {k: np.broadcast_to(v[None], (4,) + v.shape) for k, v in catalogue.items()}
    np.testing.assert_allclose(full, apply(variables, users, as_cands), rtol=1e-4, atol=1e-5)
    for leaf in jax.tree.leaves(nn_tables(variables)):
        assert leaf.shape[0] % 8 == 0  # tables padded for row sharding


def nn_tables(variables):
    from flax import traverse_util

    flat = traverse_util.flatten_dict(variables["params"])
    return [jax.device_get(v.value if hasattr(v, "value") else v) for p, v in flat.items()
            if p[-1] == "embedding"]


@pytest.mark.parametrize("name", MODELS)
def test_unseen_and_out_of_range_ids_read_oov_rows(name):
    model, variables, apply = _built(name)
    users, cands, _ = _inputs()
    same_items = {k: np.broadcast_to(v[:1], v.shape) for k, v in cands.items()}
    for ids in (np.full(4, mr.OOV_ID), np.array([-5, 10_000, 12, 2**30])):
        scores = apply(variables, {**users, "user_id": ids}, same_items)
        assert bool(jnp.all(jnp.isfinite(scores)))
    if model.uses_user_id and not (model.uses_history or model.uses_user_features):
        # Every unseen user is the OOV row: one user, one ranking.
        s = apply(variables, {**users, "user_id": np.full(4, mr.OOV_ID)}, same_items)
        np.testing.assert_allclose(s, np.broadcast_to(s[:1], s.shape), rtol=1e-6)
        items_oov = {**cands, "item_id": np.full((4, 3), mr.OOV_ID)}
        s = apply(variables, users, items_oov)
        np.testing.assert_allclose(s, np.broadcast_to(s[:, :1], s.shape), rtol=1e-6)


@pytest.mark.parametrize("name", ["two_tower", "sasrec"])
def test_histories_empty_padded_or_garbage_under_the_mask(name):
    model, variables, apply = _built(name)
    users, cands, _ = _inputs()
    base = apply(variables, users, method="user_vectors")
    assert bool(jnp.all(jnp.isfinite(base)))
    garbage = {**users, "history": np.where(users["history/mask"], users["history"], 17)}
    np.testing.assert_allclose(apply(variables, garbage, method="user_vectors"), base,
                               rtol=1e-5, atol=1e-6)
    # Right-aligned instead of left-aligned: same items in the same order, same vector.
    shifted = {**users, "history": np.zeros_like(users["history"]),
               "history/mask": np.zeros_like(users["history/mask"])}
    for r in range(4):
        n = int(users["history/mask"][r].sum())
        shifted["history"][r, 5 - n:] = users["history"][r, :n]
        shifted["history/mask"][r, 5 - n:] = True
    np.testing.assert_allclose(apply(variables, shifted, method="user_vectors"), base,
                               rtol=1e-4, atol=1e-5)
    empty = {**users, "history/mask": np.zeros_like(users["history/mask"])}
    vecs = apply(variables, empty, method="user_vectors")
    assert bool(jnp.all(jnp.isfinite(vecs)))
    if name == "sasrec":  # an empty history reads the learned cold-start vector
        np.testing.assert_allclose(vecs, np.broadcast_to(vecs[:1], vecs.shape), rtol=1e-6)
        np.testing.assert_allclose(vecs[0], variables["params"]["empty_history"].value,
                                   rtol=1e-6)


def test_sasrec_reads_order_and_two_tower_pools_it_away():
    users, cands, _ = _inputs()
    rev = {**users, "history": users["history"].copy()}
    rev["history"][0, :5] = users["history"][0, :5][::-1]
    for name, order_matters in (("sasrec", True), ("two_tower", False)):
        _, variables, apply = _built(name)
        a = apply(variables, users, method="user_vectors")[0]
        b = apply(variables, rev, method="user_vectors")[0]
        assert (not np.allclose(a, b, atol=1e-6)) == order_matters, name


def test_pair_models_reject_the_in_batch_loss():
    with pytest.raises(ValueError, match="NeuMF scores"):
        mr.InBatchSoftmaxLoss().resolve(mr.NeuMF)
    assert isinstance(mr.ModelLoss().resolve(mr.TwoTower), mr.InBatchSoftmaxLoss)
    assert isinstance(mr.ModelLoss().resolve(mr.MF), mr.BPRLoss)
    assert mr.ModelLoss().resolve(mr.NeuMF).negatives == 4


# ------------------------------------------------------------------------------ task, training
@pytest.mark.parametrize("name,data", [("gmf", "full"), ("ncf_mlp", "full"), ("neumf", "loo"),
                                       ("two_tower", "full"), ("sasrec", "seq"),
                                       ("mf_softmax", "full")])
def test_one_training_step_of_every_model_on_8_devices(name, data, tmp_path):
    assert jax.device_count() == 8
    cfg = compose_config(["+task=recommendation", f"recommendation/model={name}",
                          f"recommendation/data={data}", "task.companions=[]",
                          "trainer.max_steps=1", "trainer.eval_every=0"])
    results = run(cfg, workdir=tmp_path)
    m, info = results["metrics"], results["data"]
    protocol = {"full": "full", "loo": "loo99", "seq": "seq"}[data]
    assert results["steps_run"] == 1 and results["environment"]["devices"] == 8
    assert results["objective"]["name"] == f"valid/{protocol}/mrr@10"
    assert info["train_interactions"] + info["valid_interactions"] + \
        info["test_interactions"] == 100_000
    names = {"full": ["recall", "mrr", "ndcg", "hit", "precision"], "loo": ["hr", "ndcg", "mrr"],
             "seq": ["hit", "ndcg", "mrr"]}[data]
    keys = {f"{s}/{protocol}/{p}{n}@10" for s in ("valid", "test") for n in names
            for p in ("", "popularity/")}
    assert set(m) == keys  # every key names its protocol; nothing else is reported
    assert all(0 <= v <= 1 for v in m.values())
    # The popularity baseline is scored by the same evaluator, beside the model.
    assert m[f"test/{protocol}/popularity/ndcg@10"] > 0.02


def test_default_run_reports_full_ranking_and_the_ncf_protocol(tmp_path):
    assert jax.device_count() == 8
    cfg = compose_config(["+task=recommendation", "trainer.max_steps=2", "trainer.eval_every=0"])
    results = run(cfg, workdir=tmp_path)
    m = results["metrics"]
    assert results["data"]["model"] == "MF" and results["data"]["loss"] == "BPRLoss"
    companion = json.loads((tmp_path / "loo" / "results.json").read_text())
    assert companion["data"]["protocol"] == "loo99" and results["data"]["protocol"] == "full"
    assert companion["data"]["valid_users"] == companion["data"]["test_users"] == 943
    for split in ("valid", "test"):
        for key in ("hr@10", "ndcg@10", "popularity/hr@10"):
            assert m[f"{split}/loo99/{key}"] == companion["metrics"][f"{split}/loo99/{key}"]
        assert f"{split}/full/ndcg@10" in m and f"{split}/full/popularity/ndcg@10" in m
    assert {k.split("/")[1] for k in m} == {"full", "loo99"}
    assert results["data"]["companions"] == ["loo"]
    assert results["objective"]["name"] == "valid/full/mrr@10"
    # Popularity under the NCF protocol: far above chance (10 of 100 candidates).
    assert m["test/loo99/popularity/hr@10"] > 0.3


def test_companions_are_skipped_outside_a_run(capsys):
    task = tasks.build(compose_config(["+task=recommendation"]))
    assert task.info["companions"] == [] and "task.companions=['loo'] skipped" in \
        capsys.readouterr().err


def test_a_ratings_csv_without_side_files_trains_without_side_fields(ml100k, tmp_path):
    """``data.path`` in the ML-20M/25M layout (real ML-100k rows rewritten as ratings.csv): no
    user or item side files, so the two-tower reads ids and history only."""
    ml, _ = ml100k
    keep = np.isin(ml.user_id, [str(u) for u in range(1, 61)])
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{u},{i},{r:g},{t}" for u, i, r, t in zip(ml.user_id[keep], ml.item_id[keep],
                                                 ml.rating[keep], ml.timestamp[keep])]
    (tmp_path / "ratings.csv").write_text("\n".join(lines) + "\n")
    cfg = compose_config(["+task=recommendation", "recommendation/model=two_tower",
                          "task.companions=[]", f"data.path={tmp_path / 'ratings.csv'}"])
    task = tasks.build(cfg)
    assert task.info["users"] == 60 and task.info["interactions"] == int(keep.sum())
    assert task.info["fields_left_out"] == ["age", "gender", "occupation", "genres", "year"]
    assert set(task.signatures["serving_default"].inputs) == {"user_id", "history", "item_id"}
    assert set(task.signatures["item_embedding"].inputs) == {"item_id"}
    from mlsd_jax.tasks.base import init_variables, run_forward

    inputs = {k: v[:8] for k, v in task.inputs(task.example_batch).items()}

    def forward(rng):
        variables = init_variables(task.model, task.forward, task.consts, inputs, rng)
        return run_forward(task.model, task.forward, variables, task.consts, inputs,
                           train=True, rng=rng)[0]

    outputs = jax.jit(forward)(jax.random.key(0))
    assert outputs["user"].shape == (8, cfg.model.embed_dim) and bool(jnp.all(jnp.isfinite(outputs["item"])))


# --------------------------------------------------------------------------------- serving
@pytest.fixture(scope="module")
def two_tower_task():
    cfg = compose_config(["+task=recommendation", "recommendation/model=two_tower",
                          "task.companions=[]"])
    task = tasks.build(cfg)
    from mlsd_jax.tasks.base import init_variables

    inputs = {k: v[:1] for k, v in task.inputs(task.example_batch).items()}
    variables = jax.jit(lambda rng: init_variables(task.model, task.forward, task.consts, inputs,
                                                   rng))(jax.random.key(0))
    jitted = {n: jax.jit(predict_fn(task.model, sig)) for n, sig in task.signatures.items()}

    def predict(name, raw):
        sig = task.signatures[name]
        encoded = cast_inputs(sig.model_inputs, sig.encode_np(cast_inputs(sig.inputs, raw)))
        return {k: np.asarray(v) for k, v in jitted[name](variables, task.consts, encoded).items()}

    return cfg, task, predict


def test_cold_start_serving_from_raw_strings(two_tower_task):
    _, task, predict = two_tower_task
    raw = task.serving_examples["serving_default"]
    assert {"user_id", "age", "gender", "occupation", "history", "item_id"} == set(raw)
    assert set(task.signatures) == {"serving_default", "user_embedding", "item_embedding"}
    scores = predict("serving_default", raw)["scores"]
    assert scores.shape == raw["item_id"].shape and np.all(np.isfinite(scores))
    enc = task.signatures["serving_default"].encode_np(raw)
    assert enc["user_id"][-2:].tolist() == [mr.OOV_ID, mr.OOV_ID]   # unseen users
    assert enc["item_id"][0, -1] == mr.OOV_ID                        # an unseen candidate
    assert enc["history/mask"][-1].sum() == 0                        # an empty history
    # Two unseen users differ through what the client sends (side fields and history) ...
    assert not np.allclose(scores[-1], scores[-2])
    # ... while the unseen ids themselves all read the one OOV row.
    renamed = {**raw, "user_id": np.asarray([f"nobody-{j}" for j in range(6)] +
                                            list(raw["user_id"][6:]), dtype=object)}
    twin = {**raw, "user_id": np.asarray(["x", "y", "z"] + list(renamed["user_id"][3:]),
                                         dtype=object)}
    np.testing.assert_allclose(predict("serving_default", renamed)["scores"],
                               predict("serving_default", twin)["scores"], rtol=1e-6)
    # ANN serving: user . item embeddings reproduce the scores of known items.
    u = predict("user_embedding", {k: raw[k] for k in task.signatures["user_embedding"].inputs})
    items = task.serving_examples["item_embedding"]
    v = predict("item_embedding", items)["embedding"]
    assert u["embedding"].shape[0] == 8 and v.shape == (8, u["embedding"].shape[1])
    known = {**raw, "item_id": np.asarray([list(items["item_id"][:4])] * 8, dtype=object)}
    np.testing.assert_allclose(predict("serving_default", known)["scores"],
                               u["embedding"] @ v[:4].T, rtol=1e-4, atol=1e-4)


def test_serving_signatures_follow_what_the_model_reads(two_tower_task):
    from mlsd_jax.tasks.recommendation import serving

    _, task, _ = two_tower_task
    for name, keys in (("mf", {"user_id", "item_id"}), ("neumf", {"user_id", "item_id"}),
                       ("sasrec", {"history", "item_id"})):
        other = compose_config(["+task=recommendation", f"recommendation/model={name}"])
        sigs = serving(other, task.features).signatures
        assert set(sigs["serving_default"].inputs) == keys
        assert sigs["serving_default"].inputs["item_id"][0] == ("batch", "candidates")
        assert ("user_embedding" in sigs) == (name != "neumf")


@pytest.mark.slow
def test_export_round_trip_with_raw_strings_and_unseen_ids(tmp_path):
    from mlsd_jax.export import load_bundle, saved_model_predict

    cfg = compose_config(["+task=recommendation", "recommendation/model=two_tower",
                          "task.companions=[]", "export.enabled=true"])
    results = run(cfg, workdir=tmp_path)
    path = results["paths"]["export"]
    bundle = load_bundle(path)
    task = tasks.build(cfg)
    for name, raw in task.serving_examples.items():
        fast = bundle.predict(raw, name)
        served = saved_model_predict(path, raw, name)
        for key in fast:
            np.testing.assert_allclose(served[key], fast[key], rtol=1e-4, atol=1e-4)
    raw = dict(task.serving_examples["serving_default"])
    raw["item_id"] = np.asarray([["brand-new-1", "brand-new-2"]] * 8, dtype=object)
    served = saved_model_predict(path, raw)
    np.testing.assert_allclose(served["scores"][:, 0], served["scores"][:, 1], rtol=1e-6)


# ------------------------------------------------------------------------------------ quality
# RecBole publishes BPR on ML-100k under the same full-ranking protocol (RS 8:1:1 per user, all
# items ranked, embedding 64, Adam 1e-3, batch 2048, early stopping on valid MRR@10): test
# NDCG@10 0.2920 from the quick-start run of its docs (0.2768 from the best parameters of the
# hyper-tuning example on its parameter-tuning page). Our BPR must land within 0.03 of the
# quick-start figure (the harness reproduces the field's number), clearly above popularity, and
# the best model (MF with the full softmax and weight decay, chosen on validation) must beat
# both BPR on the same split and RecBole's published BPR figures.
RECBOLE_BPR_NDCG10 = 0.2920
RECBOLE_BPR_MRR10 = 0.4855


@pytest.mark.slow
def test_bpr_reproduces_recbole_and_mf_with_the_full_softmax_beats_it(tmp_path):
    def full_run(model):
        cfg = compose_config(["+task=recommendation", f"recommendation/model={model}",
                              "task.companions=[]", "export.enabled=false",
                              "trainer.progress=false"], tiny=False)
        return run(cfg, workdir=tmp_path / model)["metrics"]

    bpr = full_run("mf")
    assert bpr["test/full/ndcg@10"] > bpr["test/full/popularity/ndcg@10"] + 0.05, bpr
    assert abs(bpr["test/full/ndcg@10"] - RECBOLE_BPR_NDCG10) <= 0.03, bpr
    assert bpr["test/full/hit@10"] > 0.7 and bpr["test/full/recall@10"] > 0.2, bpr
    best = full_run("mf_softmax")
    assert best["test/full/ndcg@10"] >= bpr["test/full/ndcg@10"] + 0.02, (best, bpr)
    assert best["test/full/ndcg@10"] > RECBOLE_BPR_NDCG10, best
    assert best["test/full/mrr@10"] > RECBOLE_BPR_MRR10, best
