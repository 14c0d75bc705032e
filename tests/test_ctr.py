"""CTR: layer math, the calibration metric, the time split, the Criteo reader, every model on
8 devices, cold start through the export, and (slow) quality on the real MovieLens split."""
import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.data import ctr as ctr_data
from mlsd_jax.experiment import run
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.metrics.calibration import CalibrationByDecile
from mlsd_jax.models import ctr as models
from mlsd_jax.models.embedding import field_offsets
from tests.utils import compose_config

MODELS = ("lr", "fm", "deepfm", "wide_deep", "dcn_v2")

# The first line of Criteo's Kaggle display-advertising train.txt: the upstream format, with an
# empty integer (I12) and an empty category (C22).
CRITEO_LINE = ("0\t1\t1\t5\t0\t1382\t4\t15\t2\t181\t1\t2\t\t2\t68fd1e64\t80e26c9b\tfb936136\t"
               "7b4723c4\t25c83c98\t7e0ccccf\tde7995b8\t1f89b562\ta73ee510\ta8cd5504\tb2cb9c98\t"
               "37c9c164\t2824a5f6\t1adce6ef\t8ba8b39a\t891b62e7\te5ba7672\tf54016b9\t21ddcdc9\t"
               "b1252a9d\t07b5194c\t\t3a171ecb\tc5c50484\te8b83407\t9727dd16")


# ------------------------------------------------------------------------------------ layers
def _inputs(batch=8, seed=0):
    """Encoded fields as a fitted spec gives them: ids, a masked multi-valued field, numbers."""
    rng = np.random.default_rng(seed)
    genres = rng.integers(1, 6, (batch, 4)).astype(np.int32)
    mask = np.arange(4)[None] < rng.integers(1, 5, (batch, 1))
    return {"user_id": rng.integers(0, 20, batch).astype(np.int32),
            "item_id": rng.integers(0, 30, batch).astype(np.int32),
            "genres": np.where(mask, genres, 0), "genres/mask": mask,
            "age": rng.normal(size=batch).astype(np.float32),
            "age/missing": (rng.random(batch) < 0.2).astype(np.float32)}


CARDS = {"user_id": 20, "item_id": 30, "genres": 6}


def _model(name, **kw):
    cls = {"lr": models.LogisticRegression, "fm": models.FactorizationMachine,
           "deepfm": models.DeepFM, "wide_deep": models.WideDeep, "dcn_v2": models.DCNv2}[name]
    if name != "lr":
        kw.setdefault("embed_dim", 4)
    if name in ("deepfm", "wide_deep", "dcn_v2"):
        kw.setdefault("hidden", (8,))
    return cls(CARDS, **kw)


def _init_apply(model, x, seed=0):
    import flax.linen as nn

    params = nn.meta.unbox(model.init({"params": jax.random.key(seed)}, x))
    # Embedding tables start at zero (wide part) or small: give every parameter some weight.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = jax.tree.unflatten(tree, [jax.random.normal(k, jnp.shape(l)) * 0.3
                                       for k, l in zip(keys, leaves)])
    return params, lambda v, **kw: model.apply(params, v, **kw)


def test_fm_interaction_equals_the_naive_pairwise_sum():
    e = np.random.default_rng(0).normal(size=(5, 7, 3))
    naive = np.array([sum(e[b, i] @ e[b, j] for i in range(7) for j in range(i + 1, 7))
                      for b in range(5)])
    np.testing.assert_allclose(models.fm_interaction(jnp.asarray(e)), naive, rtol=1e-5, atol=1e-5)


def test_fm_model_is_linear_part_plus_pairwise_term_of_field_vectors():
    x = _inputs()
    fm = _model("fm")
    params, apply = _init_apply(fm, x)
    p = jax.tree.map(np.asarray, params)["params"]["features"]

    def pooled(table, ids, mask=None):
        if mask is None:
            return table[ids]
        return (table[ids] * mask[..., None]).sum(1) / np.maximum(mask.sum(1), 1)[:, None]

    # Every id field's rows sit in one stacked table at the field's row offset.
    offsets, rows = field_offsets(CARDS)
    assert p["embed"]["embedding"].shape == (rows, 4) and p["linear"]["embedding"].shape == (rows, 1)
    emb = {f: p["embed"]["embedding"][offsets[f]:] for f in CARDS}
    lin = {f: p["linear"]["embedding"][offsets[f]:] for f in CARDS}
    fields = [pooled(emb["user_id"], x["user_id"]),
              pooled(emb["item_id"], x["item_id"]),
              pooled(emb["genres"], x["genres"], x["genres/mask"]),
              x["age"][:, None] * p["numeric_age"]["kernel"][0],
              x["age/missing"][:, None] * p["numeric_age_missing"]["kernel"][0]]
    linear = (p["bias"][0] + lin["user_id"][x["user_id"], 0]
              + lin["item_id"][x["item_id"], 0]
              + pooled(lin["genres"], x["genres"], x["genres/mask"])[:, 0]
              + np.stack([x["age"], x["age/missing"]], 1) @ p["linear_numeric"]["kernel"][:, 0])
    pair = sum(np.sum(fields[i] * fields[j], -1) for i in range(5) for j in range(i + 1, 5))
    np.testing.assert_allclose(apply(x), linear + pair, rtol=1e-4, atol=1e-4)
    # The penalty term: squared norms of the id rows each example read (embedding and linear).
    wide = [lin["user_id"][x["user_id"], 0],
            lin["item_id"][x["item_id"], 0],
            pooled(lin["genres"], x["genres"], x["genres/mask"])[:, 0]]
    l2 = sum(np.sum(f * f, -1) for f in fields[:3]) + sum(v * v for v in wide)
    _, got = apply(x, with_l2=True)
    np.testing.assert_allclose(got, l2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_stacked_table_gives_the_outputs_of_separate_tables_with_the_same_rows(dtype):
    import flax.linen as nn

    from mlsd_jax.models.embedding import MultiEmbedding, StackedEmbedding, table_rows

    x = _inputs(batch=16, seed=3)
    ids = {f: x[f] for f in CARDS}
    ids["user_id"] = ids["user_id"].copy()
    ids["user_id"][:4] = [-1, 20, 10_000, 19]  # OOV ids of user_id read user_id's OOV row
    masks = {"genres": x["genres/mask"]}
    sep = MultiEmbedding(CARDS, 5, dtype=dtype)
    stacked = StackedEmbedding(CARDS, 5, dtype=dtype)
    p_sep = nn.meta.unbox(sep.init(jax.random.key(0), ids, masks))
    p_st = nn.meta.unbox(stacked.init(jax.random.key(1), ids, masks))
    offsets, rows = field_offsets(CARDS)
    # Same parameter count: each field keeps its rows, OOV row and rounding.
    assert rows == sum(table_rows(c) for c in CARDS.values())
    assert p_st["params"]["embedding"].size == sum(v.size for v in jax.tree.leaves(p_sep))
    table = np.asarray(p_st["params"]["embedding"]).copy()
    for f in CARDS:  # the separate tables' rows, copied to their offsets
        sep_rows = np.asarray(p_sep["params"][f]["embedding"])
        table[offsets[f]:offsets[f] + len(sep_rows)] = sep_rows
    p_st = {"params": {"embedding": jnp.asarray(table)}}
    want = sep.apply(p_sep, ids, masks)
    got = stacked.apply(p_st, ids, masks)
    for f in CARDS:
        assert got[f].dtype == want[f].dtype
        np.testing.assert_allclose(np.asarray(got[f], np.float32),
                                   np.asarray(want[f], np.float32), rtol=1e-6, atol=1e-6)
    # One id shape for every field (the stacked [..., F] read) and stack=True.
    single = {f: x[f] if f != "genres" else x["genres"][:, 0] for f in CARDS}
    np.testing.assert_allclose(stacked.apply(p_st, single, stack=True),
                               sep.apply(p_sep, single, stack=True), rtol=1e-6, atol=1e-6)
    assert not np.allclose(got["user_id"][0], got["user_id"][4])
    np.testing.assert_array_equal(got["user_id"][0], got["user_id"][1])  # -1 and 20: OOV
    with pytest.raises(KeyError, match="expected"):
        stacked.apply(p_st, {"user_id": ids["user_id"]})
    with pytest.raises(TypeError, match="'item_id' must be integers"):
        stacked.apply(p_st, dict(ids, item_id=x["age"]), masks)


@pytest.mark.parametrize("low_rank", [None, 3])
def test_cross_network_follows_the_dcn_v2_recurrence(low_rank):
    x0 = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    net = models.CrossNetwork(num_layers=2, low_rank=low_rank)
    params, apply = _init_apply(net, x0)
    p = jax.tree.map(np.asarray, params)["params"]
    x = x0
    for i in range(2):
        if low_rank:
            h = (x @ p[f"down_{i}"]["kernel"]) @ p[f"up_{i}"]["kernel"] + p[f"up_{i}"]["bias"]
        else:
            h = x @ p[f"cross_{i}"]["kernel"] + p[f"cross_{i}"]["bias"]
        x = x0 * h + x  # x_{l+1} = x0 * (W x_l + b) + x_l
    np.testing.assert_allclose(apply(x0), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS + ("dcn_v2_parallel",))
def test_models_give_one_logit_per_row_masks_hold_and_unknown_ids_read_the_oov_row(name):
    model = _model("dcn_v2", structure="parallel") if name == "dcn_v2_parallel" else _model(name)
    x = _inputs()
    _, apply = _init_apply(model, x)
    out = apply(x)
    assert out.shape == (8,) and np.all(np.isfinite(out))
    # Garbage under the mask of a multi-valued field changes nothing.
    noisy = dict(x, genres=np.where(x["genres/mask"], x["genres"], 999).astype(np.int32))
    np.testing.assert_allclose(apply(noisy), out, rtol=1e-6, atol=1e-6)
    # Ids outside the table (unseen at the model level, negative) all read the OOV row.
    far = dict(x, user_id=np.full(8, 10_000, np.int32))
    neg = dict(x, user_id=np.full(8, -5, np.int32))
    edge = dict(x, user_id=np.full(8, CARDS["user_id"], np.int32))
    np.testing.assert_allclose(apply(far), apply(edge), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(apply(neg), apply(edge), rtol=1e-6, atol=1e-6)
    assert not np.allclose(apply(far), out)


def test_linear_scale_multiplies_the_first_order_part_and_dcn_has_none():
    x = _inputs()
    one, ten = _model("lr"), _model("lr", linear_scale=10.0)
    params, _ = _init_apply(one, x)
    np.testing.assert_allclose(ten.apply(params, x), 10 * one.apply(params, x), rtol=1e-5)
    import flax.linen as nn

    dcn = nn.meta.unbox(_model("dcn_v2").init(jax.random.key(0), x))["params"]["features"]
    assert set(dcn) == {"embed", "numeric_age", "numeric_age_missing"}  # no unused weights


def test_id_dropout_reads_the_oov_id_in_training_only():
    x = _inputs()
    model = _model("deepfm", dropout=0.0, id_dropout={"user_id": 1.0})
    params, _ = _init_apply(model, x)
    rngs = {"dropout": jax.random.key(3)}
    train = model.apply(params, x, train=True, rngs=rngs)
    oov = dict(x, user_id=np.where(x["user_id"] > 0, 1, 0).astype(np.int32))  # missing stays 0
    np.testing.assert_allclose(train, model.apply(params, oov), rtol=1e-6, atol=1e-6)
    assert not np.allclose(model.apply(params, x), train)  # inference reads the real ids
    with pytest.raises(ValueError, match="not id fields"):
        _model("lr", id_dropout={"user": 0.5}).init(jax.random.key(0), x)


def test_focal_loss_without_focusing_is_the_cross_entropy():
    from mlsd_jax.tasks.ctr import binary_cross_entropy, focal_loss

    rng = np.random.default_rng(0)
    logit = jnp.asarray(rng.normal(size=64), jnp.float32)
    y = jnp.asarray(rng.random(64) < 0.3, jnp.float32)
    w = jnp.asarray(np.r_[np.ones(60), np.zeros(4)], jnp.float32)
    assert float(focal_loss(logit, y, w, gamma=0.0)) == pytest.approx(
        float(binary_cross_entropy(logit, y, w)), rel=1e-5)
    assert float(focal_loss(logit, y, w, gamma=2.0)) < float(binary_cross_entropy(logit, y, w))


# ----------------------------------------------------------------------------------- metrics
def test_ctr_metrics_agree_with_scikit_learn_with_weights_and_padding():
    from sklearn.metrics import log_loss, roc_auc_score

    from mlsd_jax.tasks.ctr import ctr_metrics

    rng = np.random.default_rng(0)
    n = 1000
    logit = rng.normal(size=n).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-1.5 * logit))).astype(np.float32)
    w = rng.uniform(0.5, 2, n).astype(np.float32)
    w[-37:] = 0.0  # padding rows, holding garbage
    logit[-37:] = np.nan
    prob = 1 / (1 + np.exp(-logit.astype(np.float64)))
    out = {"logit": logit, "prob": prob.astype(np.float32)}
    metrics = ctr_metrics()
    got = {k: ms.evaluate_arrays(m, out, {"label": y}, w, batch_size=128)
           for k, m in metrics.items()}
    keep = w > 0
    assert got["auc"] == pytest.approx(roc_auc_score(y[keep], prob[keep], sample_weight=w[keep]),
                                       abs=1e-6)
    assert got["logloss"] == pytest.approx(log_loss(y[keep], prob[keep], sample_weight=w[keep]),
                                           abs=1e-5)
    assert got["mean_prob"] == pytest.approx(np.average(prob[keep], weights=w[keep]), abs=1e-5)
    assert got["calibration"]["ratio"] == pytest.approx(
        np.sum(w[keep] * prob[keep]) / np.sum(w[keep] * y[keep]), rel=1e-5)


def _deciles_reference(p, y, w, groups=10):
    """Exact weighted groups: sort by p, a row's group from its cumulative-weight midpoint."""
    order = np.argsort(p, kind="stable")
    p, y, w = p[order], y[order], w[order]
    mid = np.cumsum(w) - w / 2
    g = np.minimum((groups * mid / w.sum()).astype(int), groups - 1)
    out = {}
    for k in range(groups):
        s = g == k
        out[f"d{k + 1}_pred"] = np.sum(w[s] * p[s]) / np.sum(w[s])
        out[f"d{k + 1}_obs"] = np.sum(w[s] * y[s]) / np.sum(w[s])
    gaps = [abs(np.sum(w[g == k] * (y[g == k] - p[g == k]))) for k in range(groups)]
    out["ece"] = sum(gaps) / w.sum()
    return out


def test_calibration_by_decile_equals_the_numpy_reference():
    metric = CalibrationByDecile(pred="logit", label="label", from_logits=True)
    rng = np.random.default_rng(0)
    # Each prediction alone in its fine log-odds bin: the binned metric must be exact.
    n = 500
    width = 2 * metric.limit / metric.bins
    bins = np.sort(rng.choice(np.arange(100, metric.bins - 100), n, replace=False))
    logit = (-metric.limit + (bins + 0.5) * width).astype(np.float32)
    prob = 1 / (1 + np.exp(-logit.astype(np.float64)))
    y = (rng.random(n) < prob).astype(np.float32)
    w = rng.uniform(0.5, 2, n)
    got = ms.evaluate_arrays(metric, {"logit": logit}, {"label": y}, w, batch_size=64)
    ref = _deciles_reference(prob, y, w)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-5), k
    # Low CTR (0.4%, as OBD): deciles still resolve the predictions; equal-width bins cannot.
    logit = rng.normal(-5.5, 0.8, 20_000).astype(np.float32)
    prob = 1 / (1 + np.exp(-logit.astype(np.float64)))
    y = (rng.random(len(prob)) < prob).astype(np.float32)
    got = ms.evaluate_arrays(metric, {"logit": logit}, {"label": y}, None, batch_size=4096)
    ref = _deciles_reference(prob, y, np.ones_like(prob))
    for k in range(1, 11):  # a boundary falls within one fine bin of the exact quantile
        assert got[f"d{k}_pred"] == pytest.approx(ref[f"d{k}_pred"], rel=0.02)
    assert got["d1_pred"] < got["d5_pred"] < got["d10_pred"]
    assert abs(got["ratio"] - 1) < 0.15 and got["ece"] < 0.003
    # Merging batch states equals one pass over everything.
    whole = ms.evaluate_arrays(metric, {"logit": logit}, {"label": y})
    assert whole == pytest.approx(got, abs=1e-6)


# -------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def movielens():
    log = ctr_data.movielens_clicks()
    return log, ctr_data.time_split(log.timestamp, 0.1, 0.2)


def test_movielens_clicks_and_time_split(movielens):
    from mlsd_jax.data.movielens import load_movielens

    log, parts = movielens
    ml = load_movielens()
    np.testing.assert_array_equal(log.label, (ml.rating >= 4).astype(np.float32))
    assert {"user_id", "item_id", "age", "gender", "occupation", "zip_code", "genres",
            "year"} <= set(log.columns)
    assert log.columns["genres"][0] == "|".join(ml.items["genres"][ml.item_id[0]])
    assert log.columns["age"].dtype == np.float32 and log.columns["age"][0] == float(
        ml.users["age"][ml.user_id[0]])
    ts = log.timestamp
    assert ts[parts["train"]].max() < ts[parts["valid"]].min()
    assert ts[parts["valid"]].max() < ts[parts["test"]].min()
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(len(log)))
    sizes = {k: len(v) / len(log) for k, v in parts.items()}
    assert sizes["test"] == pytest.approx(0.2, abs=0.005)
    assert sizes["valid"] == pytest.approx(0.1, abs=0.005)
    facts = ctr_data.describe_split(log, parts)
    assert facts["test_cold_user_rate"] > 0.5  # later users arrive cold


def test_time_split_keeps_tied_timestamps_in_one_split():
    ts = np.array([5, 1, 2, 2, 3, 3, 3, 3, 4, 4])
    parts = ctr_data.time_split(ts, 0.2, 0.2)
    assert ts[parts["train"]].max() < ts[parts["valid"]].min() <= ts[parts["valid"]].max() \
        < ts[parts["test"]].min()
    assert list(parts["test"]) == [0]  # the cut at 8 rows moved past the tied 4s
    with pytest.raises(ValueError, match="valid_fraction"):
        ctr_data.time_split(ts, 0.6, 0.5)


def test_open_bandit_dataset_click_log():
    log = ctr_data.obd_clicks()
    assert len(log) == 60_000 and 0.002 < log.label.mean() < 0.008
    assert set(log.columns["campaign"]) == {"all", "men", "women"}
    assert set(log.columns["position"]) == {"1", "2", "3"}
    assert all(i.split("/")[0] in ("all", "men", "women") for i in log.columns["item_id"][:100])
    assert np.all(np.isfinite(log.columns["affinity"]))
    parts = ctr_data.time_split(log.timestamp, 0.1, 0.2)
    assert log.timestamp[parts["valid"]].max() < log.timestamp[parts["test"]].min()


# ------------------------------------------------------------------------------------ Criteo
def _criteo_file(tmp_path, rows=300, seed=0, name="day.tsv"):
    """The real upstream line followed by simulated lines in the same format."""
    sim = tmp_path / f"sim_{name}"
    ctr_data.write_simulated_criteo(sim, rows - 1, seed=seed, cardinality_scale=0.001)
    path = tmp_path / name
    path.write_text(CRITEO_LINE + "\n" + sim.read_text())
    return path


def test_criteo_reader_reads_the_upstream_format_with_empty_fields(tmp_path):
    path = _criteo_file(tmp_path)
    chunks = list(ctr_data.read_criteo_chunks(path, block_bytes=4096))
    assert len(chunks) > 3 and sum(map(len, chunks)) == 300
    first = chunks[0]
    assert first.first_line == 1 and first.label[0] == 0
    np.testing.assert_array_equal(first.ints[0, :11], [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2])
    assert np.isnan(first.ints[0, 11]) and first.ints[0, 12] == 2
    cols = first.columns()
    assert cols["C1"][0] == "68fd1e64" and cols["C22"][0] == "" and cols["C26"][0] == "9727dd16"
    assert chunks[1].first_line == 1 + len(chunks[0])
    whole = list(ctr_data.read_criteo_chunks(path))
    np.testing.assert_array_equal(np.concatenate([c.label for c in chunks]), whole[0].label)
    gz = tmp_path / "day.tsv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes().replace(b"\n", b"\n\n", 3)))  # blank lines
    again = list(ctr_data.read_criteo_chunks(gz))
    assert sum(map(len, again)) == 300 and ctr_data.count_criteo_rows(gz) == 300
    np.testing.assert_array_equal(again[0].ints, whole[0].ints)


@pytest.mark.parametrize("line,field,problem", ids=["39 fields", "label 2", "empty label",
                                                    "float", "text"], argvalues=[
    (CRITEO_LINE.rsplit("\t", 1)[0], "(line)", "has 39 fields"),
    ("2" + CRITEO_LINE[1:], "label", "not 0 or 1"),
    ("\t" + CRITEO_LINE[2:], "label", "not 0 or 1"),
    (CRITEO_LINE.replace("\t1382\t", "\t13.5\t"), "I5", "not an integer"),
    (CRITEO_LINE.replace("\t1382\t", "\tabc\t"), "I5", "not an integer"),
])
def test_criteo_reader_names_the_file_line_and_field_of_a_bad_line(tmp_path, line, field,
                                                                    problem):
    path = _criteo_file(tmp_path, rows=200)
    lines = path.read_text().splitlines()
    lines[150] = line  # line 151, in a later block than the first
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ctr_data.CriteoFormatError) as e:
        for _ in ctr_data.read_criteo_chunks(path, block_bytes=8192):
            pass
    assert e.value.line == 151 and e.value.field == field
    assert str(e.value).startswith(f"{path}:151: field {field}: ") and problem in str(e.value)
    assert "I1-I13" in str(e.value)


def _criteo_spec(**kw):
    from omegaconf import OmegaConf

    from mlsd_jax.tasks.ctr import _feature_spec

    cfg = OmegaConf.load("configs/ctr/data/criteo.yaml")
    return _feature_spec({**OmegaConf.to_container(cfg), **kw})


@pytest.mark.parametrize("hash_buckets,fields", ids=["hashed, all fields", "vocabulary, some"],
                         argvalues=[(1000, {}), (None, {"numeric": ["I2", "I5"],
                                                        "categorical": ["C1", "C22", "C26"]})])
def test_criteo_store_encodes_as_the_feature_spec_and_splits_by_position(tmp_path, hash_buckets,
                                                                         fields):
    path = _criteo_file(tmp_path, rows=500)
    store = ctr_data.build_criteo_store(path, tmp_path / "store",
                                        _criteo_spec(hash_buckets=hash_buckets, min_count=2,
                                                     **fields),
                                        fit_rows=300, valid_fraction=0.1, test_fraction=0.2,
                                        block_bytes=8192)
    assert len(store) == 500 and store.meta["fit_rows"] == 300
    assert store.splits == {"train": (0, 350), "valid": (350, 400), "test": (400, 500)}
    from mlsd_jax.features import FittedFeatureSpec

    spec = FittedFeatureSpec.from_json(store.features)
    cols = {}
    for chunk in ctr_data.read_criteo_chunks(path):
        for k, v in chunk.columns().items():
            cols.setdefault(k, []).append(v)
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    want = spec.encode_np(cols)
    got = store.rows(np.arange(500))
    assert set(got) == set(want) | {"label"}
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert got["C22"][0] == 0  # the empty category of the upstream line: missing
    with pytest.raises(ValueError, match="not Criteo columns"):
        ctr_data.criteo_fields(_criteo_spec(categorical=["C1", "I3"], numeric=["I1"]))
    reopened = ctr_data.CriteoStore.open(tmp_path / "store")
    np.testing.assert_array_equal(reopened.ids, store.ids)
    with open(tmp_path / "store" / "ids.npy", "r+b") as f:  # damage it
        f.seek(-4, 2)
        f.write(b"\x00\x00\x00\x01")
    with pytest.raises(ValueError, match="sha256"):
        ctr_data.CriteoStore.open(tmp_path / "store")


def test_block_batches_visit_every_training_row_once_per_epoch_and_resume():
    seen = []
    read = lambda rows: {"row": np.asarray(rows)}  # noqa: E731
    batches = ctr_data.BlockBatches(read, 100, 1100, batch_size=40, block_rows=64)
    stream = batches.train(seed=3)
    for _ in range(25):  # one epoch: 1000 rows / 40
        seen.append(next(stream)["row"])
    rows = np.concatenate(seen)
    assert sorted(rows.tolist()) == list(range(100, 1100))
    assert not np.array_equal(rows, np.arange(100, 1100))  # shuffled
    resumed = batches.train(seed=3, start_step=7)
    np.testing.assert_array_equal(next(resumed)["row"], seen[7])
    ev = list(batches.eval())
    assert len(ev) == 25 and all(b["weight"].sum() == 40 for b in ev)
    tail = list(ctr_data.BlockBatches(read, 0, 50, 16).eval())
    assert [b["weight"].sum() for b in tail] == [16, 16, 16, 2]


def test_criteo_task_trains_one_step_from_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "cache"))
    path = _criteo_file(tmp_path, rows=2000)
    cfg = compose_config(["+task=ctr", "ctr/data=criteo", "ctr/model=lr", f"data.path={path}",
                          "data.hash_buckets=1000", "data.numeric_buckets=0",
                          "data.progress=false", "trainer.max_steps=1", "trainer.eval_every=0",
                          "trainer.eval_batch_size=256"])
    results = run(cfg, workdir=tmp_path / "run")
    assert results["data"]["train_rows"] == 1600 and results["steps_run"] == 1
    assert 0 <= results["metrics"]["test/auc"] <= 1
    assert list((tmp_path / "cache" / "criteo").iterdir())  # converted once, cached


# ------------------------------------------------------------------------- training, export
@pytest.fixture(scope="module")
def debug_task():
    """The default task on the debug overlay, built once for the per-model steps."""
    from mlsd_jax import tasks

    cfg = compose_config(["+task=ctr"])
    return cfg, tasks.build(cfg)


@pytest.mark.parametrize("model", MODELS)
def test_training_steps_of_every_model_on_8_devices(model, debug_task):
    import dataclasses

    import hydra

    from mlsd_jax import sharding as shd
    from mlsd_jax.experiment import typed
    from mlsd_jax.training.optim import OptimConfig
    from mlsd_jax.training.trainer import Trainer, TrainerConfig

    cfg, task = debug_task
    model_cfg = compose_config(["+task=ctr", f"ctr/model={model}"]).model
    task = dataclasses.replace(task, model=hydra.utils.instantiate(
        model_cfg, cardinalities=task.model.cardinalities, id_dropout={}))
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    assert mesh.devices.size == 8
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    state = trainer.init_state()
    before = jax.device_get(state.params)
    batches = task.train_batches(0, 0)
    for _ in range(2):  # the first step has learning rate 0 (warmup starts at 0)
        state, metrics = trainer.train_step(state, trainer.put_batch(next(batches)),
                                            jax.random.key(0))
    assert bool(metrics["train/finite"]) and float(metrics["train/grad_norm"]) > 0
    assert int(state.step) == 2
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before),
                                                  jax.tree.leaves(jax.device_get(state.params)))]
    assert any(moved)


def test_unseen_users_and_items_read_the_oov_row(debug_task):
    from mlsd_jax.tasks.base import init_variables, run_forward

    _, task = debug_task
    raw = {k: np.array(v, copy=True) for k, v in task.serving_examples["serving_default"].items()}
    assert set(raw) == {"user_id", "item_id", "age", "gender", "occupation", "zip_code",
                        "genres", "year"}
    raw["user_id"][:2] = ["a-new-user", "another-new-user"]
    for k in raw:
        raw[k][1] = raw[k][0] if k != "user_id" else raw[k][1]
    raw["item_id"][2] = "a-new-item"
    raw["zip_code"][3] = b"55455"  # bytes, as TensorFlow clients send strings
    encoded = task.signatures["serving_default"].encode_np(raw)
    assert encoded["user_id"][0] == encoded["user_id"][1] == 1 and encoded["item_id"][2] == 1
    assert encoded["zip_code"][3] == task.signatures["serving_default"].encode_np(
        dict(raw, zip_code=np.array(["554"] * 8, object)))["zip_code"][3]
    variables = init_variables(task.model, task.forward, task.consts, encoded, jax.random.key(0))
    out, _ = run_forward(task.model, task.forward, variables, task.consts, encoded, train=False)
    assert out["prob"][0] == out["prob"][1]  # every cold user gets the same answer
    # Untrained, the model predicts the training click rate (its output is read from there).
    rate = task.info["train_ctr"]
    assert float(task.consts["prior_logit"]) == pytest.approx(np.log(rate / (1 - rate)), abs=1e-6)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_bytes_strings_score_as_their_str_through_the_server(debug_task, tmp_path):
    """Strings sent as bytes (REST ``{"b64": ...}``, an ``S`` array in process) give the codes
    and scores of the same values as str, the prefixed zip code included."""
    import base64
    import json
    import shutil

    from starlette.testclient import TestClient

    from mlsd_jax import sharding as shd
    from mlsd_jax.experiment import typed
    from mlsd_jax.export import export_model
    from mlsd_jax.serving import codec, serve_config
    from mlsd_jax.serving.rest import RestApi
    from mlsd_jax.serving.server import build_state
    from mlsd_jax.training.optim import OptimConfig
    from mlsd_jax.training.trainer import Trainer, TrainerConfig

    cfg, task = debug_task
    raw = {k: np.asarray(v)[:4] for k, v in task.serving_examples["serving_default"].items()}
    raw["zip_code"] = raw["zip_code"].astype(object).copy()
    raw["zip_code"][1] = "Ünïcode-zip"               # the prefix counts characters, not bytes
    strings = [k for k, v in raw.items() if v.dtype.kind in "OU"]
    assert "zip_code" in strings and "genres" in strings
    sig = task.signatures["serving_default"]
    as_bytes = dict(raw, **{k: np.array([str(x).encode() for x in raw[k]], "S")
                            for k in strings})
    want = sig.encode_np(raw)
    got = sig.encode_np(as_bytes)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1]})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    path = export_model(task, trainer.init_state(0), tmp_path / "exports", version=1,
                        check=False, card={"data": dict(task.info)})
    shutil.copytree(path, tmp_path / "models" / "ctr" / "1")
    state = build_state(serve_config({
        "models": [{"name": "ctr", "base_path": str(tmp_path / "models" / "ctr")}],
        "rest_port": 0, "grpc_port": -1, "access_log": False, "log": {"enabled": False},
        "compilation_cache": None,
        "batching": {"buckets": [1, 4], "max_batch_size": 4, "dim_buckets": {}}}))
    body = codec.tfs_request(raw, "columnar")
    b64 = {"inputs": dict(body["inputs"], **{
        k: [{"b64": base64.b64encode(str(x).encode()).decode()} for x in raw[k]]
        for k in strings})}
    try:
        with TestClient(RestApi(state.service).app()) as client:
            plain = client.post("/v1/models/ctr:predict", content=json.dumps(body))
            sent = client.post("/v1/models/ctr:predict", content=json.dumps(b64))
    finally:
        state.close()
    assert plain.status_code == 200 and sent.status_code == 200, sent.text
    assert sent.json()["outputs"] == plain.json()["outputs"]
    assert len(set(plain.json()["outputs"]["prob"])) > 1      # the rows score differently


def test_default_run_end_to_end_on_8_devices(tmp_path):
    cfg = compose_config(["+task=ctr", "trainer.max_steps=2", "trainer.eval_every=2",
                          "trainer.eval_batch_size=4096"])
    results = run(cfg, workdir=tmp_path)
    assert results["steps_run"] == 2 and results["environment"]["devices"] == 8
    assert results["objective"]["name"] == "valid/auc"
    m = results["metrics"]
    assert np.isfinite(m["valid/logloss"]) and 0 <= m["test/auc"] <= 1
    assert {"valid/calibration/d1_obs", "valid/calibration/d10_pred", "valid/calibration/ece",
            "test/calibration/ratio", "test/ece", "test/mean_prob"} <= set(m)
    assert results["data"]["test_cold_user_rate"] > 0.5


@pytest.mark.slow
def test_cold_start_and_raw_rows_agree_through_training_bundle_and_savedmodel(tmp_path):
    from mlsd_jax import tasks
    from mlsd_jax.export import load_bundle, saved_model_predict
    from mlsd_jax.tasks.base import run_forward

    cfg = compose_config(["+task=ctr", "trainer.max_steps=3", "trainer.eval_every=3",
                          "export.enabled=true"])
    results = run(cfg, workdir=tmp_path)
    path = results["paths"]["export"]
    task = tasks.build(cfg)
    raw = {k: np.array(v, copy=True) for k, v in task.serving_examples["serving_default"].items()}
    raw["user_id"][0] = "user-never-seen"          # cold user
    raw["user_id"][1] = "another-new-user"
    raw["item_id"][1] = raw["item_id"][0]
    for k in ("age", "gender", "occupation", "zip_code", "genres", "year"):
        raw[k][1] = raw[k][0]                      # same row but the (also unseen) user
    raw["item_id"][2] = "item-never-seen"          # cold item
    raw["genres"][3] = "Comedy|Not-a-genre|"       # an unknown genre and an empty item
    raw["zip_code"][4] = "Ünïcode-zip"
    raw["age"][5] = np.nan                          # unknown numbers
    raw["occupation"][6] = ""                       # missing category
    bundle = load_bundle(path)
    sig = task.signatures["serving_default"]
    encoded = sig.encode_np(raw)
    assert encoded["user_id"][0] == encoded["user_id"][1] == 1  # unseen -> the OOV id
    assert encoded["item_id"][2] == 1 and encoded["occupation"][6] == 0
    fast = bundle.predict(raw)
    served = saved_model_predict(path, raw)
    train_side, _ = run_forward(task.model, task.forward, bundle.variables, bundle.consts,
                                encoded, train=False)
    for key in ("prob", "logit"):
        np.testing.assert_allclose(fast[key], np.asarray(train_side[key]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(served[key], fast[key], rtol=1e-5, atol=1e-5)
    assert fast["prob"][0] == pytest.approx(fast["prob"][1], abs=1e-7)  # one cold-start answer
    assert np.all(np.isfinite(served["prob"]))


# ------------------------------------------------------------------------------------ quality
# On this split scikit-learn's LogisticRegression (one-hot fields, C tuned on validation) scores
# test ROC-AUC 0.6825 and LightGBM (categorical features, tuned on validation) 0.6919
# (`python benchmarks/ctr_quality.py --seeds 0 1 2`, benchmarks/results/ctr_quality.md; an
# outside measurement of the same protocol gave 0.698 / 0.688). The default run (Wide & Deep,
# early-stopped on validation AUC; 0.6917-0.6941 over three seeds, 0.6941 with the default
# seed) must beat the linear peer.
LOGREG_TEST_AUC = 0.6825


@pytest.mark.slow
def test_default_ctr_run_beats_the_logistic_regression_peer(tmp_path):
    cfg = compose_config(["+task=ctr", "export.enabled=false", "trainer.progress=false"],
                         tiny=False)
    results = run(cfg, workdir=tmp_path)
    m = results["metrics"]
    assert m["test/auc"] > LOGREG_TEST_AUC, m
    # Calibration is not given away for ranking: the peer's test log-loss is 0.638 and its
    # decile ECE 0.036; ours reads 0.640-0.648 and 0.055-0.084 over the three seeds across the
    # later, shifted test period.
    assert m["test/logloss"] < 0.66 and m["test/calibration/ece"] < 0.10, m
    assert results["data"]["test_rows"] == 19_997
