"""Streaming metric accumulators: agreement with scikit-learn / NumPy references, padding safety,
merging over uneven batches and sharded updates."""
import itertools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from mlsd_jax.metrics import ndcg_metric  # noqa: E402
from mlsd_jax.metrics import streaming as S  # noqa: E402

N = 500
BATCH = 64  # evaluate_arrays chunks: 500 rows -> uneven last batch


# ------------------------------------------------------------------------------ data helpers
def binary_data(seed=0, n=N, ties=True):
    """Probabilities (rounded so that ties occur), logits, 0/1 labels and sample weights."""
    rng = np.random.default_rng(seed)
    prob = rng.uniform(size=n)
    if ties:
        prob = np.round(prob, 2)
    prob = np.clip(prob, 0.005, 0.995).astype(np.float32)
    label = (rng.uniform(size=n) < prob).astype(np.float32)
    weight = rng.uniform(0.2, 3.0, size=n).astype(np.float32)
    logits = np.log(prob) - np.log1p(-prob)
    return {"prob": prob, "logits": logits.astype(np.float32)}, {"label": label}, weight


def multiclass_data(seed=0, n=N, c=5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    label = np.where(rng.uniform(size=n) < 0.5, logits.argmax(1), rng.integers(0, c, n))
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    weight = rng.uniform(0.2, 3.0, size=n).astype(np.float32)
    return {"logits": logits, "prob": prob.astype(np.float32)}, {"label": label.astype(np.int32)}, \
        weight


def with_padding(outputs, batch, weight, n_pad=77, seed=1):
    """Interleaves ``n_pad`` weight-0 rows of garbage (NaN floats, huge ints) at random places."""
    rng = np.random.default_rng(seed)
    n = len(weight)
    pos = np.sort(rng.choice(n + n_pad, n_pad, replace=False))
    real = np.setdiff1d(np.arange(n + n_pad), pos)

    def pad(x):
        x = np.asarray(x)
        out = np.empty((n + n_pad,) + x.shape[1:], x.dtype)
        out[real] = x
        if np.issubdtype(x.dtype, np.floating):
            out[pos] = np.nan
        else:
            out[pos] = True if x.dtype == bool else np.iinfo(x.dtype).max
        return out
    w = np.zeros(n + n_pad, np.float32)
    w[real] = weight
    return jax.tree.map(pad, outputs), jax.tree.map(pad, batch), w


def edit_distance(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def speech_data(seed=0, n=200, h=12, r=10, vocab=4):
    """Random token sequences with lengths 0..max (and rows of garbage beyond the lengths)."""
    rng = np.random.default_rng(seed)
    hyp = rng.integers(0, vocab, (n, h)).astype(np.int32)
    ref = rng.integers(0, vocab, (n, r)).astype(np.int32)
    hyp_len = rng.integers(0, h + 1, n).astype(np.int32)
    ref_len = rng.integers(0, r + 1, n).astype(np.int32)
    hyp_len[:5], ref_len[:5] = [0, 0, 3, h, 0], [0, 4, 0, r, r]
    return {"hyp": hyp, "hyp_len": hyp_len}, {"ref": ref, "ref_len": ref_len}, None


def evaluate_padded(metric, outputs, batch, weight, batch_size=BATCH):
    return S.evaluate_arrays(metric, *with_padding(outputs, batch, weight), batch_size=batch_size)


# ------------------------------------------------------------------- scikit-learn agreement
def _binary_cases():
    sk = sklearn_metrics
    pos = lambda o, t=0.5: (o["prob"] > t).astype(int)
    return [
        ("auc", S.BinaryAUC(), lambda o, y, w: sk.roc_auc_score(y, o["prob"], sample_weight=w)),
        ("auc_logits", S.BinaryAUC(pred="logits", from_logits=True),
         lambda o, y, w: sk.roc_auc_score(y, o["prob"], sample_weight=w)),
        ("ap", S.AveragePrecision(),
         lambda o, y, w: sk.average_precision_score(y, o["prob"], sample_weight=w)),
        ("logloss", S.LogLoss(), lambda o, y, w: sk.log_loss(y, o["prob"], sample_weight=w)),
        ("logloss_logits", S.LogLoss(pred="logits", from_logits=True),
         lambda o, y, w: sk.log_loss(y, o["prob"], sample_weight=w)),
        ("accuracy", S.Accuracy(),
         lambda o, y, w: sk.accuracy_score(y, pos(o), sample_weight=w)),
        ("accuracy_t0.3_logits", S.Accuracy(pred="logits", from_logits=True, threshold=0.3),
         lambda o, y, w: sk.accuracy_score(y, pos(o, 0.3), sample_weight=w)),
        ("precision", S.Precision(threshold=0.6),
         lambda o, y, w: sk.precision_score(y, pos(o, 0.6), sample_weight=w)),
        ("recall", S.Recall(threshold=0.6),
         lambda o, y, w: sk.recall_score(y, pos(o, 0.6), sample_weight=w)),
        ("f1", S.F1(), lambda o, y, w: sk.f1_score(y, pos(o), sample_weight=w)),
        ("f1_logits", S.F1(pred="logits", from_logits=True),
         lambda o, y, w: sk.f1_score(y, pos(o), sample_weight=w)),
    ]


@pytest.mark.parametrize("name,metric,reference", _binary_cases(), ids=lambda c: c
                         if isinstance(c, str) else "")
def test_binary_metrics_match_sklearn_with_weights_and_nan_padding(name, metric, reference):
    outputs, batch, weight = binary_data()
    expected = reference(outputs, batch["label"].astype(int), weight)
    np.testing.assert_allclose(evaluate_padded(metric, outputs, batch, weight), expected,
                               rtol=2e-5, atol=1e-6, err_msg=name)
    unweighted = reference(outputs, batch["label"].astype(int), None)
    np.testing.assert_allclose(S.evaluate_arrays(metric, outputs, batch, batch_size=BATCH),
                               unweighted, rtol=2e-5, atol=1e-6, err_msg=name)


def test_logloss_clips_like_sklearn():
    prob = np.array([0.0, 1.0, 1.0, 0.0, 0.3, 1e-9], np.float32)
    label = np.array([1, 0, 1, 0, 1, 1], np.float32)
    expected = sklearn_metrics.log_loss(label.astype(int), prob)  # float32 eps, as on device
    got = S.evaluate_arrays(S.LogLoss(), {"prob": prob}, {"label": label})
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    logits = np.array([-200.0, 200.0, 200.0, -200.0, np.log(0.3 / 0.7), -40.0], np.float32)
    got = S.evaluate_arrays(S.LogLoss(pred="logits", from_logits=True), {"logits": logits},
                            {"label": label})
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert np.isfinite(got)


def _multiclass_cases():
    sk = sklearn_metrics
    am = lambda o: o["logits"].argmax(1)
    cases = [
        ("accuracy", S.Accuracy(pred="logits"),
         lambda o, y, w: sk.accuracy_score(y, am(o), sample_weight=w)),
        ("top1", S.TopKAccuracy(k=1), lambda o, y, w: sk.top_k_accuracy_score(
            y, o["logits"], k=1, sample_weight=w, labels=np.arange(5))),
        ("top3", S.TopKAccuracy(k=3), lambda o, y, w: sk.top_k_accuracy_score(
            y, o["logits"], k=3, sample_weight=w, labels=np.arange(5))),
    ]
    for (cls, fn), avg in itertools.product(
            [(S.Precision, sk.precision_score), (S.Recall, sk.recall_score), (S.F1, sk.f1_score)],
            ["macro", "micro"]):
        cases.append((f"{cls.__name__}_{avg}", cls(pred="logits", average=avg, num_classes=5),
                      lambda o, y, w, fn=fn, avg=avg: fn(y, am(o), average=avg, sample_weight=w)))
    return cases


@pytest.mark.parametrize("name,metric,reference", _multiclass_cases(), ids=lambda c: c
                         if isinstance(c, str) else "")
def test_multiclass_metrics_match_sklearn(name, metric, reference):
    outputs, batch, weight = multiclass_data()
    expected = reference(outputs, batch["label"], weight)
    np.testing.assert_allclose(evaluate_padded(metric, outputs, batch, weight), expected,
                               rtol=1e-5, err_msg=name)


def test_macro_average_skips_classes_never_seen():
    outputs, batch, weight = multiclass_data(c=5)
    keep = (batch["label"] != 4) & (outputs["logits"].argmax(1) != 4)  # class 4 never appears
    outputs, batch, weight = jax.tree.map(lambda x: x[keep], (outputs, batch, weight))
    expected = sklearn_metrics.f1_score(batch["label"], outputs["logits"].argmax(1),
                                        average="macro", sample_weight=weight)
    got = S.evaluate_arrays(S.F1(pred="logits", average="macro", num_classes=5), outputs, batch,
                            weight, batch_size=BATCH)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(N,), (N, 3)])
def test_regression_metrics_match_sklearn(shape):
    rng = np.random.default_rng(3)
    label = rng.normal(size=shape).astype(np.float32)
    pred = (label + rng.normal(scale=0.5, size=shape)).astype(np.float32)
    weight = rng.uniform(0.2, 3.0, size=N).astype(np.float32)
    outputs, batch = {"pred": pred}, {"label": label}
    mse = sklearn_metrics.mean_squared_error(label, pred, sample_weight=weight)
    mae = sklearn_metrics.mean_absolute_error(label, pred, sample_weight=weight)
    np.testing.assert_allclose(evaluate_padded(S.RMSE(), outputs, batch, weight), np.sqrt(mse),
                               rtol=1e-5)
    np.testing.assert_allclose(evaluate_padded(S.MAE(), outputs, batch, weight), mae, rtol=1e-5)


# ----------------------------------------------------------------------- merging and sharding
def _all_metrics():
    """(metric, outputs, batch, weight) for every accumulator."""
    bo, bb, bw = binary_data(seed=5)
    mo, mb, mw = multiclass_data(seed=5)
    rng = np.random.default_rng(5)
    ro = {"pred": rng.normal(size=N).astype(np.float32)}
    rb = {"label": rng.normal(size=N).astype(np.float32)}
    so, sb, _ = speech_data(seed=5, n=N)
    cases = [(m, bo, bb, bw) for m in [
        S.BinaryAUC(), S.BinaryAUC(bins=50), S.AveragePrecision(), S.AveragePrecision(bins=50),
        S.LogLoss(), S.Accuracy(), S.Precision(), S.Recall(), S.F1(),
        S.ExpectedCalibrationError(), S.Mean(key="prob")]]
    cases += [(m, mo, mb, mw) for m in [
        S.Accuracy(pred="logits"), S.TopKAccuracy(k=2),
        S.F1(pred="logits", average="macro", num_classes=5),
        S.ExpectedCalibrationError(pred="logits", from_logits=True)]]
    cases += [(m, ro, rb, bw) for m in [S.RMSE(), S.MAE()]]
    cases += [(S.WordErrorRate(hyp_length="hyp_len", ref_length="ref_len"), so, sb, bw)]
    return cases


@pytest.mark.parametrize("case", _all_metrics(), ids=lambda c: repr(c[0])[:60])
def test_merging_uneven_batches_equals_one_pass(case):
    metric, outputs, batch, weight = case
    one_pass = S.evaluate_arrays(metric, outputs, batch, weight)
    # Uneven real batches, padded to one shape as in evaluation, merged in a shuffled order.
    cuts = [0, 3, 40, 41, 100, 164, 200, 230, 290, 333, 390, 450, N]
    slices = list(zip(cuts[:-1], cuts[1:]))
    np.random.default_rng(0).shuffle(slices)
    update = S.jitted_update(metric)
    acc = None
    for lo, hi in slices:
        o, b, w = jax.tree.map(lambda x: np.asarray(x)[lo:hi], (outputs, batch, weight))
        o, b, w = with_padding(o, b, w, n_pad=BATCH - (hi - lo), seed=lo)
        acc = metric.merge(acc, jax.device_get(update(o, b, w)))
    np.testing.assert_allclose(metric.compute(acc), one_pass, rtol=1e-5)
    assert np.isfinite(one_pass)


def test_sharded_jit_update_gives_the_same_state():
    devices = jax.devices()
    assert len(devices) == 8, "tests run with 8 simulated devices (see conftest.py)"
    mesh = Mesh(np.array(devices), ("data",))
    shard = NamedSharding(mesh, P("data"))
    n = 8 * 16
    # One metric per kind of state: concatenated examples, histograms, per-class counts,
    # scalar sums, a scan (WER).
    kinds = (S.BinaryAUC, S.AveragePrecision, S.F1, S.ExpectedCalibrationError, S.TopKAccuracy,
             S.LogLoss, S.RMSE, S.WordErrorRate)
    cases = [c for c in _all_metrics() if type(c[0]) in kinds]
    assert len(cases) >= len(kinds)
    for metric, outputs, batch, weight in cases:
        args = jax.tree.map(lambda x: np.asarray(x)[:n], (outputs, batch, weight))
        args = with_padding(*args, n_pad=24)  # 152 rows = 8 x 19
        expected = jax.device_get(S.jitted_update(metric)(*args))
        sharded = jax.device_put(args, shard)
        assert sharded[2].sharding == shard
        got = jax.device_get(jax.jit(metric.update)(*sharded))
        jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5,
                                                             err_msg=repr(metric)), got, expected)


def test_all_padding_batch_adds_nothing():
    outputs, batch, weight = binary_data()
    garbage = jax.tree.map(lambda x: np.full_like(np.asarray(x)[:BATCH], np.nan), (outputs, batch))
    for metric in (S.BinaryAUC(), S.BinaryAUC(bins=50), S.LogLoss(), S.F1()):
        update = S.jitted_update(metric)
        acc = metric.merge(None, jax.device_get(update(*garbage, np.zeros(BATCH, np.float32))))
        assert np.isnan(metric.compute(acc)) or metric.compute(acc) == 0.0
        one_pass = S.accumulate(metric, outputs, batch, weight, batch_size=BATCH)
        acc = S.accumulate(metric, outputs, batch, weight, batch_size=BATCH)
        acc = metric.merge(acc, jax.device_get(update(*garbage, np.zeros(BATCH, np.float32))))
        assert metric.compute(acc) == metric.compute(one_pass)


# ---------------------------------------------------------------------------- calibration
def ece_reference(conf, correct, weight, bins):
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if weight[m].sum() > 0:
            total += abs(np.sum(weight[m] * correct[m]) - np.sum(weight[m] * conf[m]))
    return total / weight.sum()


def test_ece_binary_matches_numpy_reference():
    outputs, batch, weight = binary_data(ties=False)
    prob = outputs["prob"].copy()
    prob[:5] = [0.0, 1.0, 0.1, 0.5, 0.9999]  # bin edges and the p = 1 case
    outputs = dict(outputs, prob=prob)
    for bins in (1, 10, 15):
        expected = ece_reference(prob.astype(np.float64), batch["label"], weight, bins)
        got = evaluate_padded(S.ExpectedCalibrationError(bins=bins), outputs, batch, weight)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    miscal = dict(outputs, prob=np.clip(prob * 0.5, 0, 1))
    assert evaluate_padded(S.ExpectedCalibrationError(), miscal, batch, weight) > \
        evaluate_padded(S.ExpectedCalibrationError(), outputs, batch, weight) + 0.1


def test_ece_multiclass_top_label_matches_numpy_reference():
    outputs, batch, weight = multiclass_data()
    conf = outputs["prob"].max(1).astype(np.float64)
    correct = (outputs["prob"].argmax(1) == batch["label"]).astype(np.float64)
    expected = ece_reference(conf, correct, weight, 10)
    for metric in (S.ExpectedCalibrationError(bins=10),
                   S.ExpectedCalibrationError(pred="logits", bins=10, from_logits=True)):
        np.testing.assert_allclose(evaluate_padded(metric, outputs, batch, weight), expected,
                                   rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------ binned AUC / AP
@pytest.mark.parametrize("bins", [5, 50, 1000])
@pytest.mark.parametrize("ties", [False, True])
def test_binned_auc_and_ap_within_their_bound(bins, ties):
    outputs, batch, weight = binary_data(seed=7, n=2000, ties=ties)
    for cls in (S.BinaryAUC, S.AveragePrecision):
        exact = S.evaluate_arrays(cls(), outputs, batch, weight, batch_size=256)
        binned = cls(bins=bins)
        state = S.accumulate(binned, outputs, batch, weight, batch_size=256)
        value, bound = binned.compute(state), binned.error_bound(state)
        assert abs(value - exact) <= bound + 1e-9, (cls.__name__, bins, value, exact, bound)
        if bins == 5:
            assert abs(value - exact) > 1e-4  # coarse bins really differ (the check has teeth)
        if bins >= 1000 and not ties:
            assert bound < 0.01, (cls.__name__, bound)


def test_binned_auc_bound_is_tight_when_all_scores_share_a_bin():
    prob = np.linspace(0.41, 0.49, 100).astype(np.float32)  # one bin of 2; exact AUC is 1
    label = (np.arange(100) >= 50).astype(np.float32)
    m = S.BinaryAUC(bins=2)
    state = m.merge(None, jax.device_get(m.update({"prob": prob}, {"label": label},
                                                  np.ones(100, np.float32))))
    assert m.compute(state) == 0.5 and m.error_bound(state) == 0.5
    assert S.evaluate_arrays(S.BinaryAUC(), {"prob": prob}, {"label": label}) == 1.0


def test_auc_undefined_for_one_class():
    outputs, batch, weight = binary_data()
    ones = {"label": np.ones_like(batch["label"])}
    assert np.isnan(S.evaluate_arrays(S.BinaryAUC(), outputs, ones, weight))
    assert S.evaluate_arrays(S.AveragePrecision(), outputs, ones, weight) == 1.0


# --------------------------------------------------------------------------------- WER / CER
def test_levenshtein_matches_python_reference():
    outputs, batch, _ = speech_data()
    got = np.asarray(S.levenshtein(outputs["hyp"], outputs["hyp_len"], batch["ref"],
                                   batch["ref_len"]))
    expected = [edit_distance(list(a[:la]), list(b[:lb])) for a, la, b, lb in
                zip(outputs["hyp"], outputs["hyp_len"], batch["ref"], batch["ref_len"])]
    np.testing.assert_array_equal(got, expected)
    assert int(S.levenshtein(np.zeros((1, 0)), [0], np.zeros((1, 3)), [3])[0]) == 3  # empty hyp


def test_wer_and_cer_match_python_levenshtein():
    outputs, batch, _ = speech_data(seed=2)
    rng = np.random.default_rng(2)
    weight = rng.uniform(0.5, 2.0, len(outputs["hyp"])).astype(np.float32)
    edits = np.array([edit_distance(list(a[:la]), list(b[:lb])) for a, la, b, lb in
                      zip(outputs["hyp"], outputs["hyp_len"], batch["ref"], batch["ref_len"])])
    expected = np.sum(weight * edits) / np.sum(weight * batch["ref_len"])
    wer = S.WordErrorRate(hyp_length="hyp_len", ref_length="ref_len")
    np.testing.assert_allclose(evaluate_padded(wer, outputs, batch, weight), expected, rtol=1e-6)
    # The same sequences given as masks, under the CharErrorRate key names.
    chars_o = {"hyp_chars": outputs["hyp"],
               "hyp_mask": np.arange(12)[None, :] < outputs["hyp_len"][:, None]}
    chars_b = {"ref_chars": batch["ref"],
               "ref_mask": np.arange(10)[None, :] < batch["ref_len"][:, None]}
    cer = S.CharErrorRate(hyp_mask="hyp_mask", ref_mask="ref_mask")
    np.testing.assert_allclose(evaluate_padded(cer, chars_o, chars_b, weight), expected,
                               rtol=1e-6)


def test_wer_full_length_rows():
    hyp = np.array([[1, 2, 3], [1, 1, 1]], np.int32)
    ref = np.array([[1, 2, 4, 5], [1, 1, 1, 1]], np.int32)
    got = S.evaluate_arrays(S.WordErrorRate(), {"hyp": hyp}, {"ref": ref})
    assert got == pytest.approx((2 + 1) / 8)


# --------------------------------------------------------------------- means and messages
def test_per_example_mean_wraps_ranking_metrics():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(40, 6)).astype(np.float32)
    labels = rng.integers(0, 3, (40, 6)).astype(np.float32)
    mask = rng.uniform(size=(40, 6)) < 0.8
    weight = rng.uniform(0.5, 2.0, 40).astype(np.float32)
    metric = S.PerExampleMean(lambda s, b: ndcg_metric(s, b["label"], where=b["mask"], topn=3,
                                                       reduce_fn=None))
    per_list = np.asarray(jax.jit(metric.fn)(scores, {"label": labels, "mask": mask}))
    expected = np.sum(weight * per_list) / weight.sum()
    got = S.evaluate_arrays(metric, scores, {"label": labels, "mask": mask}, weight)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    m = S.Mean(key="loss")
    np.testing.assert_allclose(
        evaluate_padded(m, {"loss": per_list.astype(np.float32)}, {}, weight), expected,
        rtol=1e-6)


def test_clear_errors():
    outputs, batch, weight = binary_data(n=8)
    with pytest.raises(KeyError, match=r"BinaryAUC.pred='score'.*\['logits', 'prob'\]"):
        S.BinaryAUC(pred="score").update(outputs, batch, weight)
    with pytest.raises(ValueError, match=r"LogLoss.pred: expected a \[B\]"):
        S.LogLoss().update({"prob": np.zeros((8, 3))}, batch, weight)
    with pytest.raises(ValueError, match="weights: expected shape"):
        S.LogLoss().update(outputs, batch, weight[:4])
    with pytest.raises(ValueError, match="F1.num_classes"):
        S.F1(average="macro")
    with pytest.raises(ValueError, match="Precision.average"):
        S.Precision(average="weighted")
    with pytest.raises(ValueError, match="BinaryAUC.bins"):
        S.BinaryAUC(bins=0)
    with pytest.raises(ValueError, match="TopKAccuracy.pred"):
        S.TopKAccuracy().update({"logits": np.zeros(8)}, batch, weight)
    with pytest.raises(ValueError, match="give hyp_length or hyp_mask"):
        S.WordErrorRate(hyp_length="a", hyp_mask="b")
