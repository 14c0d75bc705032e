"""Tests for mlsd_jax.losses.ranking / lambdaweights against a NumPy reference."""
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.losses import (
    approx_ndcg_loss,
    dcg_lambdaweight,
    labeldiff_lambdaweight,
    lambdarank_loss,
    listmle_loss,
    pairwise_hinge_loss,
    pairwise_logistic_loss,
    pointwise_mse_loss,
    pointwise_sigmoid_loss,
    softmax_loss,
)



# ---------------------------------------------------------------------------
# NumPy reference (one list at a time, loops on purpose)
# ---------------------------------------------------------------------------


def np_ranks(s, m):
    valid = sorted((i for i in range(len(s)) if m[i]), key=lambda i: (-float(s[i]), i))
    invalid = [i for i in range(len(s)) if not m[i]]
    r = np.zeros(len(s), dtype=np.int64)
    for pos, i in enumerate(valid + invalid):
        r[i] = pos + 1
    return r


def _lse(x):
    x = np.asarray(x, np.float64)
    mx = x.max()
    return mx + np.log(np.sum(np.exp(x - mx)))


def np_mse(s, l, m, w):
    idx = [i for i in range(len(s)) if m[i]]
    return sum(w[i] * (s[i] - l[i]) ** 2 for i in idx) / len(idx) if idx else 0.0


def np_sigmoid(s, l, m, w):
    idx = [i for i in range(len(s)) if m[i]]
    out = 0.0
    for i in idx:
        p = 1.0 / (1.0 + np.exp(-float(s[i])))
        out += -w[i] * (np.log(p) if l[i] > 0 else np.log(1.0 - p))
    return out / len(idx) if idx else 0.0


def np_pairwise(kind, s, l, m, w, lam=None):
    total, n = 0.0, 0
    for i in range(len(s)):
        for j in range(len(s)):
            if m[i] and m[j] and l[i] > l[j]:
                d = float(s[i]) - float(s[j])
                loss = np.log1p(np.exp(-d)) if kind == "logistic" else max(0.0, 1.0 - d)
                total += w[i] * (1.0 if lam is None else lam[i, j]) * loss
                n += 1
    return total / n if n else 0.0


def np_dcg_lambda(s, l, m, topn=None, normalize=True):
    L = len(s)
    r = np_ranks(s, m)
    g = np.where(m, 2.0 ** l - 1.0, 0.0)
    d = np.array([1 / np.log2(1 + r[i]) if m[i] and (topn is None or r[i] <= topn) else 0.0 for i in range(L)])
    lam = np.zeros((L, L))
    for i in range(L):
        for j in range(L):
            if m[i] and m[j]:
                lam[i, j] = abs(g[i] - g[j]) * abs(d[i] - d[j])
    if normalize:
        ri = np_ranks(g, m)
        ideal = sum(g[i] / np.log2(1 + ri[i]) for i in range(L) if m[i] and (topn is None or ri[i] <= topn))
        lam = lam / ideal if ideal > 0 else np.zeros_like(lam)
    return lam


def np_softmax(s, l, m, w):
    idx = [i for i in range(len(s)) if m[i]]
    t = np.array([w[i] * l[i] for i in idx])
    if not idx or t.sum() == 0:
        return 0.0
    lse = _lse([s[i] for i in idx])
    return -sum(t[k] / t.sum() * (s[i] - lse) for k, i in enumerate(idx))


def np_listmle(s, l, m, w):
    order = sorted((i for i in range(len(s)) if m[i]), key=lambda i: (-float(l[i]), i))
    return sum(w[i] * (_lse([s[j] for j in order[k:]]) - s[i]) for k, i in enumerate(order))


def np_approx_ndcg(s, l, m, w, temperature=1.0):
    L = len(s)
    g = np.where(m, w * (2.0 ** l - 1.0), 0.0)
    ri = np_ranks(g, m)
    ideal = sum(g[i] / np.log2(1 + ri[i]) for i in range(L) if m[i])
    if ideal == 0:
        return 0.0
    dcg = 0.0
    for i in range(L):
        if not m[i]:
            continue
        rank = 1.0 + sum(1.0 / (1.0 + np.exp(-(float(s[j]) - float(s[i])) / temperature)) for j in range(L) if j != i and m[j])
        dcg += g[i] / np.log2(1.0 + rank)
    return -dcg / ideal


REFS = {
    pointwise_mse_loss: np_mse,
    pointwise_sigmoid_loss: np_sigmoid,
    pairwise_logistic_loss: functools.partial(np_pairwise, "logistic"),
    pairwise_hinge_loss: functools.partial(np_pairwise, "hinge"),
    softmax_loss: np_softmax,
    listmle_loss: np_listmle,
    approx_ndcg_loss: np_approx_ndcg,
}
LOSSES = list(REFS) + [lambdarank_loss]


def make_data(seed, shape=(16, 10), p_mask=0.3):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(size=shape), 1).astype(np.float32)  # ties in scores
    l = rng.integers(0, 5, size=shape).astype(np.float32)  # ties in labels
    m = rng.random(shape) > p_mask
    fm, fl = m.reshape(-1, shape[-1]), l.reshape(-1, shape[-1])
    fm[0] = False  # all-masked list
    fl[1] = 0.0  # all-zero labels
    fm[2] = True
    fl[3] = 2.0  # all labels equal: no pairs
    return s, l, m


def reduce_ref(per_list, counted):
    return per_list[counted].mean() if counted.any() else 0.0


def _name(f):
    return f.__name__


# ---------------------------------------------------------------------------
# Agreement with the reference
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss", list(REFS), ids=_name)
def test_matches_numpy_reference(loss, weighted):
    seed = zlib.crc32(f"{loss.__name__}{weighted}".encode())
    s, l, m = make_data(seed)
    rng = np.random.default_rng(seed + 1)
    w = rng.uniform(0.2, 2.0, size=s.shape).astype(np.float32) if weighted else np.ones_like(s)
    ref = np.array([REFS[loss](*a) for a in zip(s, l, m, w)])
    kw = dict(where=m, weights=w if weighted else None)
    per_list = loss(s, l, reduce_fn=None, **kw)
    assert per_list.shape == s.shape[:-1]
    np.testing.assert_allclose(per_list, ref, rtol=1e-4, atol=1e-5)
    counted = m.any(-1)
    if loss is softmax_loss:
        counted &= (l * w * m).sum(-1) > 0
        assert counted.sum() < m.any(-1).sum()  # the all-zero-label list is excluded
    np.testing.assert_allclose(loss(s, l, **kw), reduce_ref(ref, counted), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss(s, l, reduce_fn=jnp.sum, **kw), ref.sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("topn", [None, 1, 3, 5, 10])
def test_lambdarank_matches_reference(topn):
    s, l, m = make_data(seed=100 + (topn or 0))
    ones = np.ones(s.shape[-1])
    lam = [np_dcg_lambda(*a, topn=topn) for a in zip(s, l, m)]
    np.testing.assert_allclose(dcg_lambdaweight(s, l, where=m, topn=topn), np.stack(lam), rtol=1e-5, atol=1e-7)
    ref = np.array([np_pairwise("logistic", *a, ones, lam=la) for *a, la in zip(s, l, m, lam)])
    np.testing.assert_allclose(lambdarank_loss(s, l, where=m, topn=topn, reduce_fn=None), ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lambdarank_loss(s, l, where=m, topn=topn), reduce_ref(ref, m.any(-1)), rtol=1e-4, atol=1e-6)


def test_dcg_lambdaweight_unnormalized_and_labeldiff():
    s, l, m = make_data(seed=31)
    lam = np.stack([np_dcg_lambda(*a, topn=None, normalize=False) for a in zip(s, l, m)])
    np.testing.assert_allclose(dcg_lambdaweight(s, l, where=m, normalize=False), lam, rtol=1e-5, atol=1e-6)
    ld = np.abs(l[:, :, None] - l[:, None, :]) * (m[:, :, None] & m[:, None, :])
    np.testing.assert_allclose(labeldiff_lambdaweight(s, l, where=m), ld)
    lam_ld = list(ld)
    ones = np.ones(s.shape[-1])
    ref = np.array([np_pairwise("hinge", *a, ones, lam=la) for *a, la in zip(s, l, m, lam_ld)])
    got = pairwise_hinge_loss(s, l, where=m, lambdaweight_fn=labeldiff_lambdaweight, reduce_fn=None)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_lambdaweights_have_no_gradient():
    s, l, m = make_data(seed=41)
    ones = np.ones_like(s)

    def frozen_lw(*_, **__):
        return jnp.asarray(np.stack([np_dcg_lambda(*a) for a in zip(s, l, m)]), jnp.float32)

    g = jax.grad(lambda x: lambdarank_loss(x, l, where=m))(s)
    g_frozen = jax.grad(lambda x: pairwise_logistic_loss(x, l, where=m, lambdaweight_fn=frozen_lw))(s)
    np.testing.assert_allclose(g, g_frozen, rtol=1e-4, atol=1e-7)
    assert np.abs(np.asarray(g)).sum() > 0
    for fn in (dcg_lambdaweight, labeldiff_lambdaweight):
        gg = jax.grad(lambda x: jnp.sum(fn(x, l, where=m)))(s)
        np.testing.assert_array_equal(gg, 0.0)
    del ones


def test_custom_lambdaweight_fn_is_stop_gradiented_by_the_loss():
    s, l, m = make_data(seed=42)

    def score_dependent(scores, labels, *, where):  # differentiable in scores
        return jax.nn.sigmoid(scores[..., :, None] * 2.0) + 0.0 * labels[..., None, :]

    lw_const = np.asarray(jax.nn.sigmoid(jnp.where(m, s, 0.0)[..., :, None] * 2.0) * np.ones((1, 1, s.shape[-1])))
    g = jax.grad(lambda x: pairwise_logistic_loss(x, l, where=m, lambdaweight_fn=score_dependent))(s)
    g_const = jax.grad(lambda x: pairwise_logistic_loss(x, l, where=m, lambdaweight_fn=lambda *_, **__: lw_const))(s)
    np.testing.assert_allclose(g, g_const, rtol=1e-5, atol=1e-7)


def test_listmle_tie_breaking_is_by_index():
    s = jnp.array([0.3, 2.0, -1.0])
    l = jnp.array([1.0, 1.0, 0.0])
    # Order by labels with ties by index: (0, 1, 2).
    expected = (_lse([0.3, 2.0, -1.0]) - 0.3) + (_lse([2.0, -1.0]) - 2.0)
    assert float(listmle_loss(s, l)) == pytest.approx(expected, rel=1e-5)
    # Swapping the tied items' positions changes the target order and the loss.
    swapped = (_lse([2.0, 0.3, -1.0]) - 2.0) + (_lse([0.3, -1.0]) - 0.3)
    assert float(listmle_loss(s[jnp.array([1, 0, 2])], l)) == pytest.approx(swapped, rel=1e-5)
    assert abs(expected - swapped) > 0.1


def test_known_values():
    s = jnp.array([2.0, 0.0])
    l = jnp.array([1.0, 0.0])
    assert float(pairwise_logistic_loss(s, l)) == pytest.approx(np.log1p(np.exp(-2.0)))
    assert float(pairwise_hinge_loss(s, l)) == 0.0
    assert float(pairwise_hinge_loss(-s, l)) == pytest.approx(3.0)
    assert float(softmax_loss(s, l)) == pytest.approx(np.log1p(np.exp(-2.0)))
    assert float(pointwise_mse_loss(s, l)) == pytest.approx(0.5)
    # Perfect, well-separated ranking: approx NDCG close to -1.
    assert float(approx_ndcg_loss(jnp.array([10.0, 0.0, -10.0]), jnp.array([2.0, 1.0, 0.0]), temperature=0.1)) == pytest.approx(-1.0, abs=1e-4)


# ---------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------


def _insert_masked(s, l, m, seed, n_pad=4):
    rng = np.random.default_rng(seed)
    B, L = s.shape
    sp = np.zeros((B, L + n_pad), np.float32)
    lp = np.zeros((B, L + n_pad), np.float32)
    mp = np.zeros((B, L + n_pad), bool)
    keep = np.zeros((B, L + n_pad), bool)
    for b in range(B):
        slots = np.sort(rng.choice(L + n_pad, size=L, replace=False))
        keep[b, slots] = True
        sp[b] = rng.choice([1e4, -1e4, 55.0, 0.0], size=L + n_pad)
        lp[b] = rng.choice([4.0, 9.0, 0.0, 100.0], size=L + n_pad)
        sp[b, slots], lp[b, slots], mp[b, slots] = s[b], l[b], m[b]
    return sp, lp, mp, keep


@pytest.mark.parametrize("loss", LOSSES, ids=_name)
def test_padding_with_masked_items_changes_nothing(loss):
    s, l, m = make_data(seed=zlib.crc32(loss.__name__.encode()))
    sp, lp, mp, keep = _insert_masked(s, l, m, seed=3)
    np.testing.assert_allclose(loss(sp, lp, where=mp, reduce_fn=None), loss(s, l, where=m, reduce_fn=None), rtol=1e-5, atol=1e-6)
    v, g = jax.value_and_grad(lambda x: loss(x, l, where=m))(s)
    vp, gp = jax.value_and_grad(lambda x: loss(x, lp, where=mp))(sp)
    np.testing.assert_allclose(vp, v, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(gp))
    np.testing.assert_array_equal(np.asarray(gp)[~mp], 0.0)
    np.testing.assert_allclose(np.asarray(gp)[keep].reshape(s.shape), g, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(g)).sum() > 0


@pytest.mark.parametrize("loss", LOSSES, ids=_name)
def test_all_masked_lists_give_zero_values_and_gradients(loss):
    s, l, _ = make_data(seed=1)
    s = s * 50
    m = np.zeros(s.shape, bool)
    for reduce_fn in (jnp.mean, jnp.sum):
        v, g = jax.value_and_grad(lambda x: loss(x, l, where=m, reduce_fn=reduce_fn))(s)
        assert float(v) == 0.0
        np.testing.assert_array_equal(g, 0.0)
    per_list, g = jax.value_and_grad(lambda x: jnp.sum(loss(x, l, where=m, reduce_fn=None)))(s)
    assert float(per_list) == 0.0
    np.testing.assert_array_equal(g, 0.0)
    # Mixed batch: the masked list does not dilute the mean.
    m2 = m.copy()
    m2[1] = True
    v_mixed = loss(s, l, where=m2)
    v_one = loss(s[1], l[1])
    np.testing.assert_allclose(v_mixed, v_one, rtol=1e-5)
    g_mixed = jax.grad(lambda x: loss(x, l, where=m2))(s)
    assert np.all(np.isfinite(g_mixed))
    np.testing.assert_array_equal(np.delete(np.asarray(g_mixed), 1, axis=0), 0.0)


@pytest.mark.parametrize("loss", LOSSES, ids=_name)
def test_batch_dims_are_consistent(loss):
    s, l, m = make_data(seed=77, shape=(2, 8, 10))
    full = loss(s, l, where=m, reduce_fn=None)
    assert full.shape == (2, 8)
    flat = loss(s.reshape(16, 10), l.reshape(16, 10), where=m.reshape(16, 10), reduce_fn=None)
    np.testing.assert_allclose(np.asarray(full).reshape(16), flat, rtol=1e-5, atol=1e-6)
    single = loss(s[1, 2], l[1, 2], where=m[1, 2], reduce_fn=None)
    assert single.shape == ()
    np.testing.assert_allclose(single, full[1, 2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss(s, l, where=m), loss(s.reshape(16, 10), l.reshape(16, 10), where=m.reshape(16, 10)), rtol=1e-5)


@pytest.mark.parametrize("loss", [f for f in LOSSES if f is not listmle_loss], ids=_name)
def test_permutation_invariance(loss):
    rng = np.random.default_rng(5)
    s = rng.permutation(np.arange(16 * 10, dtype=np.float32)).reshape(16, 10) / 40.0  # no ties
    l = rng.integers(0, 5, size=s.shape).astype(np.float32)
    m = rng.random(s.shape) > 0.2
    perm = rng.permutation(10)
    np.testing.assert_allclose(
        loss(s[:, perm], l[:, perm], where=m[:, perm], reduce_fn=None), loss(s, l, where=m, reduce_fn=None), rtol=1e-5, atol=1e-6
    )


def test_per_list_weights_scale_values():
    s, l, m = make_data(seed=8)
    wl = np.linspace(0.5, 2.0, s.shape[0]).astype(np.float32)[:, None]
    for loss in (pointwise_mse_loss, pairwise_logistic_loss, listmle_loss, lambdarank_loss):
        np.testing.assert_allclose(
            loss(s, l, where=m, weights=wl, reduce_fn=None), wl[:, 0] * np.asarray(loss(s, l, where=m, reduce_fn=None)), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("loss", LOSSES, ids=_name)
def test_jit_and_vmap(loss):
    raw = loss
    s, l, m = make_data(seed=12)
    eager = raw(s, l, where=m, reduce_fn=None)
    np.testing.assert_allclose(jax.jit(functools.partial(raw, reduce_fn=None))(s, l, where=m), eager, rtol=1e-5, atol=1e-6)
    vm = jax.vmap(lambda a, b, c: raw(a, b, where=c, reduce_fn=None))(s, l, m)
    np.testing.assert_allclose(vm, eager, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda x: raw(x, l, where=m))(s)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(jax.jit(jax.grad(lambda x: raw(x, l, where=m)))(s), g, rtol=1e-4, atol=1e-6)


def test_lambdarank_topn_is_static_under_jit():
    s, l, m = make_data(seed=14)
    f = jax.jit(functools.partial(lambdarank_loss, topn=2))
    np.testing.assert_allclose(f(s, l, where=m), lambdarank_loss(s, l, where=m, topn=2), rtol=1e-6)
