"""Tests for mlsd_jax.metrics.ranking against a plain NumPy reference."""
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.metrics import (
    dcg_metric,
    map_metric,
    mrr_metric,
    ndcg_metric,
    precision_metric,
    recall_metric,
)
from mlsd_jax.utils.masking import ranks, safe_reduce

TOPNS = [None, 1, 3, 5, 10]




# ---------------------------------------------------------------------------
# NumPy reference (one list at a time, loops on purpose)
# ---------------------------------------------------------------------------


def np_ranks(s, m):
    """1-based ranks: valid items by score desc (ties: lower index first), then masked."""
    valid = [i for i in range(len(s)) if m[i]]
    invalid = [i for i in range(len(s)) if not m[i]]
    valid.sort(key=lambda i: (-float(s[i]), i))
    r = np.zeros(len(s), dtype=np.int64)
    for pos, i in enumerate(valid + invalid):
        r[i] = pos + 1
    return r


def _top(r, m, topn):
    k = len(r) if topn is None else topn
    return [i for i in range(len(r)) if m[i] and r[i] <= k]


def np_dcg(s, l, m, topn, w=None):
    w = np.ones(len(s)) if w is None else w
    r = np_ranks(s, m)
    return sum(w[i] * (2.0 ** l[i] - 1.0) / np.log2(1.0 + r[i]) for i in _top(r, m, topn))


def np_ndcg(s, l, m, topn, w=None):
    w = np.ones(len(s)) if w is None else w
    gains = w * (2.0 ** l - 1.0)
    ideal = np_dcg(gains, l, m, topn, w)
    return 0.0 if ideal == 0 else np_dcg(s, l, m, topn, w) / ideal


def np_mrr(s, l, m, topn):
    r = np_ranks(s, m)
    rel = [r[i] for i in _top(r, m, topn) if l[i] >= 1]
    return 1.0 / min(rel) if rel else 0.0


def np_precision(s, l, m, topn):
    r = np_ranks(s, m)
    n_valid = int(np.sum(m))
    if n_valid == 0:
        return 0.0
    den = n_valid if topn is None else min(topn, n_valid)
    return sum(1 for i in _top(r, m, topn) if l[i] >= 1) / den


def np_recall(s, l, m, topn):
    r = np_ranks(s, m)
    n_rel = sum(1 for i in range(len(s)) if m[i] and l[i] >= 1)
    if n_rel == 0:
        return 0.0
    return sum(1 for i in _top(r, m, topn) if l[i] >= 1) / n_rel


def np_ap(s, l, m, topn):
    r = np_ranks(s, m)
    order = np.argsort(r)  # item at rank 1, 2, ...
    n_rel = sum(1 for i in range(len(s)) if m[i] and l[i] >= 1)
    if n_rel == 0:
        return 0.0
    k = len(s) if topn is None else topn
    hits, total = 0, 0.0
    for pos, i in enumerate(order[:k]):
        if not m[i]:
            break
        if l[i] >= 1:
            hits += 1
            total += hits / (pos + 1)
    return total / n_rel


REFS = {
    dcg_metric: np_dcg,
    ndcg_metric: np_ndcg,
    mrr_metric: np_mrr,
    precision_metric: np_precision,
    recall_metric: np_recall,
    map_metric: np_ap,
}
METRICS = list(REFS)


def np_batched(ref, s, l, m, topn):
    flat = [ref(s_, l_, m_, topn) for s_, l_, m_ in zip(s.reshape(-1, s.shape[-1]), l.reshape(-1, s.shape[-1]), m.reshape(-1, s.shape[-1]))]
    per_list = np.array(flat, dtype=np.float64).reshape(s.shape[:-1])
    list_valid = m.any(-1)
    mean = per_list[list_valid].mean() if list_valid.any() else 0.0
    return per_list, mean


def make_data(seed, shape=(16, 10), p_mask=0.3):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=shape), 1).astype(np.float32)  # many ties
    l = rng.integers(0, 5, size=shape).astype(np.float32)
    l[rng.random(shape) < 0.4] = 0.0
    m = rng.random(shape) > p_mask
    flat_m = m.reshape(-1, shape[-1])
    flat_l = l.reshape(-1, shape[-1])
    flat_m[0] = False  # an all-masked list
    flat_l[1] = 0.0  # a list without relevant items
    flat_m[2] = True  # a fully valid list
    return s, l, m


# ---------------------------------------------------------------------------
# Agreement with the reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("topn", TOPNS)
@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
def test_matches_numpy_reference(metric, topn):
    s, l, m = make_data(seed=zlib.crc32(f"{metric.__name__}{topn}".encode()))
    # Scores must actually contain ties for this test to mean something.
    assert any(len(set(row)) < len(row) for row in s)
    per_list_ref, mean_ref = np_batched(REFS[metric], s, l, m, topn)
    per_list = metric(s, l, where=m, topn=topn, reduce_fn=None)
    assert per_list.shape == s.shape[:-1]
    np.testing.assert_allclose(np.asarray(per_list), per_list_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metric(s, l, where=m, topn=topn)), mean_ref, rtol=1e-5, atol=1e-6)
    total = metric(s, l, where=m, topn=topn, reduce_fn=jnp.sum)
    np.testing.assert_allclose(float(total), per_list_ref.sum(), rtol=1e-5, atol=1e-5)


def test_weighted_dcg_and_ndcg_match_reference():
    s, l, m = make_data(seed=7)
    w = np.random.default_rng(8).uniform(0.1, 2.0, size=s.shape).astype(np.float32)
    for topn in (None, 3):
        dcg_ref = [np_dcg(*a, topn, w=wi) for *a, wi in zip(s, l, m, w)]
        ndcg_ref = [np_ndcg(*a, topn, w=wi) for *a, wi in zip(s, l, m, w)]
        np.testing.assert_allclose(dcg_metric(s, l, where=m, weights=w, topn=topn, reduce_fn=None), dcg_ref, rtol=1e-5)
        np.testing.assert_allclose(ndcg_metric(s, l, where=m, weights=w, topn=topn, reduce_fn=None), ndcg_ref, rtol=1e-5)


def test_without_mask_equals_all_true_mask():
    s, l, _ = make_data(seed=3)
    for metric in METRICS:
        a = metric(s, l, topn=3, reduce_fn=None)
        b = metric(s, l, where=np.ones_like(s, bool), topn=3, reduce_fn=None)
        np.testing.assert_allclose(a, b, rtol=1e-6)


# ---------------------------------------------------------------------------
# Ranks and tie-breaking
# ---------------------------------------------------------------------------


def test_ranks_helper_matches_reference():
    s, _, m = make_data(seed=11)
    r = np.asarray(ranks(s, m))
    assert r.dtype == np.int32
    for s_, m_, r_ in zip(s, m, r):
        np.testing.assert_array_equal(r_, np_ranks(s_, m_))


def test_deterministic_tie_breaking():
    s = jnp.array([1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(ranks(s), [1, 2, 3, 4])
    # Masked items go last; the rest keep index order.
    np.testing.assert_array_equal(ranks(s, jnp.array([False, True, True, True])), [4, 1, 2, 3])
    np.testing.assert_array_equal(ranks(jnp.array([0.5, 2.0, 0.5, 2.0])), [3, 1, 4, 2])
    # -0.0 and 0.0 tie.
    np.testing.assert_array_equal(ranks(jnp.array([-0.0, 0.0, -0.0])), [1, 2, 3])
    labels = jnp.array([0.0, 0.0, 1.0, 0.0])
    assert float(mrr_metric(s, labels)) == pytest.approx(1.0 / 3.0)
    assert float(mrr_metric(s, labels, where=jnp.array([False, True, True, True]))) == pytest.approx(0.5)
    # With ties, the lower index wins the top slot.
    assert float(precision_metric(s, jnp.array([1.0, 0.0, 0.0, 0.0]), topn=1)) == 1.0
    assert float(precision_metric(s, jnp.array([0.0, 1.0, 0.0, 0.0]), topn=1)) == 0.0


# ---------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------


def _pad(x, rng_positions, fill):
    out = []
    for row, pos in zip(x, rng_positions):
        row = list(row)
        for k, p in enumerate(sorted(pos)):
            row.insert(p, fill[k % len(fill)])
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("topn", [None, 3])
def test_padding_with_masked_items_changes_nothing(topn):
    s, l, m = make_data(seed=5)
    rng = np.random.default_rng(6)
    positions = [rng.integers(0, s.shape[1] + 1, size=4) for _ in range(s.shape[0])]
    garbage = [1e6, -1e6, 3.0, 1e3]
    sp = _pad(s, positions, garbage).astype(np.float32)
    lp = _pad(l, positions, [4.0, 100.0, 0.0, 7.0]).astype(np.float32)
    mp = _pad(m, positions, [False]).astype(bool)
    assert sp.shape[1] == s.shape[1] + 4
    for metric in METRICS:
        np.testing.assert_allclose(
            metric(sp, lp, where=mp, topn=topn, reduce_fn=None),
            metric(s, l, where=m, topn=topn, reduce_fn=None),
            rtol=1e-6,
            err_msg=metric.__name__,
        )


def test_batch_dims_are_consistent():
    s, l, m = make_data(seed=9, shape=(2, 8, 10))
    for metric in METRICS:
        full = np.asarray(metric(s, l, where=m, topn=3, reduce_fn=None))
        assert full.shape == (2, 8)
        flat = np.asarray(metric(s.reshape(16, 10), l.reshape(16, 10), where=m.reshape(16, 10), topn=3, reduce_fn=None))
        np.testing.assert_allclose(full.reshape(16), flat, rtol=1e-6)
        single = metric(s[1, 2], l[1, 2], where=m[1, 2], topn=3, reduce_fn=None)
        assert single.shape == ()
        np.testing.assert_allclose(single, full[1, 2], rtol=1e-6)
        np.testing.assert_allclose(metric(s, l, where=m, topn=3), metric(s.reshape(16, 10), l.reshape(16, 10), where=m.reshape(16, 10), topn=3), rtol=1e-6)


def test_all_masked_lists_give_zero():
    s = np.random.default_rng(0).normal(size=(16, 10)).astype(np.float32)
    l = np.full((16, 10), 3.0, np.float32)
    m = np.zeros((16, 10), bool)
    for metric in METRICS:
        for reduce_fn in (jnp.mean, jnp.sum):
            v = metric(s, l, where=m, reduce_fn=reduce_fn)
            assert float(v) == 0.0 and np.isfinite(float(v))
        np.testing.assert_array_equal(metric(s, l, where=m, reduce_fn=None), np.zeros(16))


def test_mean_counts_only_lists_with_valid_items():
    s = jnp.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    l = jnp.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    m = jnp.array([[True, True, True], [False, False, False]])
    assert float(mrr_metric(s, l, where=m)) == pytest.approx(1.0)
    assert float(ndcg_metric(s, l, where=m)) == pytest.approx(1.0)
    # A list without relevant items IS counted (NDCG 0).
    l2 = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(ndcg_metric(s, l2)) == pytest.approx(0.5)


@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
def test_permutation_invariance(metric):
    rng = np.random.default_rng(21)
    s = rng.permutation(np.arange(16 * 10, dtype=np.float32)).reshape(16, 10) / 7.0  # no ties
    l = rng.integers(0, 5, size=s.shape).astype(np.float32)
    m = rng.random(s.shape) > 0.3
    perm = rng.permutation(10)
    for topn in (None, 3):
        np.testing.assert_allclose(
            metric(s[:, perm], l[:, perm], where=m[:, perm], topn=topn, reduce_fn=None),
            metric(s, l, where=m, topn=topn, reduce_fn=None),
            rtol=1e-6,
        )


def test_perfect_ranking_ndcg_is_one():
    rng = np.random.default_rng(2)
    l = rng.integers(0, 5, size=(16, 10)).astype(np.float32)
    l[:, 0] = 3.0  # every list has a relevant item
    m = rng.random(l.shape) > 0.2
    m[:, 0] = True
    s = l + rng.uniform(0, 0.1, size=l.shape).astype(np.float32)
    for topn in (None, 1, 3):
        np.testing.assert_allclose(ndcg_metric(s, l, where=m, topn=topn, reduce_fn=None), 1.0, rtol=1e-6)
    # Reversed order is strictly worse for every list with distinct labels.
    assert float(ndcg_metric(-s, l, where=m)) < 0.9
    np.testing.assert_allclose(float(map_metric(s, l, where=m)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(mrr_metric(s, l, where=m)), 1.0, rtol=1e-6)


def test_known_values():
    s = jnp.array([0.9, 0.8, 0.7, 0.6])
    l = jnp.array([0.0, 1.0, 0.0, 1.0])
    assert float(mrr_metric(s, l)) == pytest.approx(0.5)
    assert float(map_metric(s, l)) == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert float(precision_metric(s, l, topn=2)) == pytest.approx(0.5)
    assert float(precision_metric(s, l, topn=10)) == pytest.approx(0.5)  # capped at 4 valid items
    assert float(recall_metric(s, l, topn=2)) == pytest.approx(0.5)
    assert float(dcg_metric(s, l)) == pytest.approx(1 / np.log2(3) + 1 / np.log2(5))
    ideal = 1.0 + 1 / np.log2(3)
    assert float(ndcg_metric(s, l)) == pytest.approx((1 / np.log2(3) + 1 / np.log2(5)) / ideal)
    assert float(map_metric(s, l, relevance_threshold=2.0)) == 0.0


# ---------------------------------------------------------------------------
# jit / vmap
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", METRICS, ids=lambda f: f.__name__)
def test_jit_and_vmap(metric):
    s, l, m = make_data(seed=13)
    eager = metric(s, l, where=m, topn=3, reduce_fn=None)
    jitted = jax.jit(functools.partial(metric, topn=3, reduce_fn=None))(s, l, where=m)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    vmapped = jax.vmap(lambda a, b, c: metric(a, b, where=c, topn=3, reduce_fn=None))(s, l, m)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-6)


def test_safe_reduce():
    v = jnp.array([1.0, 2.0, 100.0])
    w = jnp.array([True, True, False])
    assert float(safe_reduce(v, w, jnp.mean)) == 1.5
    assert float(safe_reduce(v, w, jnp.sum)) == 3.0
    np.testing.assert_array_equal(safe_reduce(v, w, None), [1.0, 2.0, 0.0])
    assert float(safe_reduce(v, jnp.zeros(3, bool), jnp.mean)) == 0.0
    g = jax.grad(lambda x: safe_reduce(x, jnp.zeros(3, bool), jnp.mean))(v)
    np.testing.assert_array_equal(g, 0.0)
