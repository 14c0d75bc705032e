"""Sequence text classifiers of the spam task (BiLSTM, TextTransformer): padding never changes a
logit (a backward LSTM that started in the padding would), shapes and errors, and a short
training run on the SMS data whose SavedModel scores raw strings (empty, emoji, 100 KB) as the
JAX forward does."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.models.text import BiLSTM, TextTransformer
from tests.utils import compose_config

HARD_TEXTS = ["", "FREE entry!! Txt WIN to 80086 now £1000 cash-prize",
              "🙂🎉 Ünïcödé café 日本語", "a", "x" * 300 + " yz",
              "Call 09061701461. Claim code KL341. Valid 12hrs only",
              "spam " * 20000 + "tail"]  # the last one is 100 KB

IDS = np.array([[3, 7, 9, 0, 0], [0, 0, 0, 0, 0], [5, 5, 0, 0, 0], [1, 2, 3, 4, 28]], np.int32)
SIDE = {"dom": np.array([1, 2, 0, 3], np.int32), "n": np.linspace(-1, 1, 4).astype(np.float32)}


def tiny(kind: str, **kw):
    kw = {"hidden": (8,), "dropout": 0.0, **kw}
    if kind == "bilstm":
        return BiLSTM({"text": 30, "text/chars": 9}, {"dom": 4}, embed_dim=8, lstm_size=6, **kw)
    return TextTransformer({"text": 30, "text/chars": 9}, {"dom": 4}, embed_dim=8, num_layers=2,
                           num_heads=2, mlp_dim=16, max_len=16, **kw)


def perturbed(model, seed=0):
    """Variables with every parameter moved off its initial value (zero biases, zero side
    weights and a zero-input LSTM at a zero state would hide a padding leak)."""
    init = jax.jit(lambda key: model.init(key, {"text": IDS}, SIDE))
    variables = nn.meta.unbox(init(jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.5 * rng.standard_normal(x.shape).astype(x.dtype),
                        variables)


@pytest.mark.parametrize("kind,pooling", [("bilstm", "max_mean"), ("transformer", "mean")])
def test_padding_leaves_logits_unchanged_and_word_order_matters(kind, pooling):
    model = tiny(kind, pooling=pooling, dropout=0.5)
    variables = perturbed(model)
    apply = jax.jit(model.apply)
    out = np.asarray(apply(variables, {"text": IDS}, SIDE))
    assert out.shape == (4,) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert len(np.unique(np.round(out, 5))) == 4
    padded = np.concatenate([IDS, np.zeros((4, 6), np.int32)], axis=1)
    np.testing.assert_allclose(apply(variables, {"text": padded}, SIDE), out, rtol=1e-5,
                               atol=1e-5)
    assert "embed_text/chars" not in variables["params"]   # character bags are not read
    # Not a bag of words: reversing the words of row 0 changes its logit only.
    flipped = IDS.copy()
    flipped[0, :3] = flipped[0, 2::-1]
    moved = np.asarray(apply(variables, {"text": flipped}, SIDE))
    assert abs(moved[0] - out[0]) > 1e-4
    np.testing.assert_allclose(moved[1:], out[1:], rtol=1e-6)
    # An empty text pools to zeros: the logit is the MLP's at zero plus the row's side term.
    empty = np.asarray(apply(variables, {"text": np.zeros_like(IDS)}, SIDE))
    assert empty[1] == pytest.approx(out[1], abs=1e-6) and np.all(np.isfinite(empty))
    no_side = np.asarray(apply(variables, {"text": np.zeros_like(IDS)},
                               {"dom": np.zeros(4, np.int32), "n": np.zeros(4, np.float32)}))
    assert np.allclose(no_side, no_side[0]) and not np.allclose(empty, empty[0])
    # Dropout acts in training only.
    train = jax.jit(lambda v, key: model.apply(v, {"text": IDS}, SIDE, train=True,
                                               rngs={"dropout": key}))
    t0, t1 = train(variables, jax.random.key(0)), train(variables, jax.random.key(1))
    assert not np.allclose(t0, t1) and not np.allclose(t0, out)


def test_a_backward_lstm_started_in_the_padding_would_fail_the_check_above():
    """A backward LSTM as the model's, run without sequence lengths, starts in the padding: its
    states at the words then change when padding is appended."""
    x = jax.random.normal(jax.random.key(1), (4, 5, 8)) * (IDS > 0)[..., None]
    xp = jnp.concatenate([x, jnp.zeros((4, 6, 8))], axis=1)
    rnn = nn.RNN(nn.OptimizedLSTMCell(6), reverse=True, keep_order=True)

    @jax.jit
    def states(x, xp):
        cell = jax.tree.map(lambda w: w + 0.5, rnn.init(jax.random.key(0), x))  # nonzero biases
        return rnn.apply(cell, x), rnn.apply(cell, xp)

    leaky, leaky_padded = (np.asarray(a) for a in states(x, xp))
    word = np.asarray(IDS > 0)
    assert np.abs((leaky_padded[:, :5] - leaky)[word]).max() > 1e-3


def test_errors_name_the_field():
    with pytest.raises(ValueError, match="sequence_bags"):
        BiLSTM({"chars": 9}).init(jax.random.key(0), {"chars": IDS})
    with pytest.raises(ValueError, match="pooling"):
        tiny("bilstm", pooling="last").init(jax.random.key(0), {"text": IDS}, SIDE)
    with pytest.raises(ValueError, match="max_len"):
        tiny("transformer").init(jax.random.key(0), {"text": np.ones((2, 17), np.int32)}, SIDE)
    with pytest.raises(ValueError, match="num_heads"):
        tiny("transformer").clone(num_heads=3).init(jax.random.key(0), {"text": IDS}, SIDE)


# ------------------------------------------------------------------------ training and export
def utf8(values):
    return np.asarray([v.encode("utf-8", "surrogateescape") for v in values], dtype=object)


SMALL = {"bilstm": ["model.embed_dim=16", "model.lstm_size=16", "model.hidden=[16]"],
         "transformer": ["model.embed_dim=16", "model.mlp_dim=32", "model.hidden=[16]",
                         "model.num_heads=2"]}


def train_and_export(kind, tmp_path):
    from mlsd_jax.experiment import run

    cfg = compose_config(["+task=spam", f"spam/model={kind}", "export.enabled=true",
                          "trainer.max_steps=6", "trainer.eval_every=3"] + SMALL[kind])
    return cfg, run(cfg, workdir=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bilstm", "transformer"])
def test_sequence_model_trains_on_sms_and_exports_raw_text(kind, tmp_path):
    from mlsd_jax.export import load_bundle, saved_model_predict

    cfg, results = train_and_export(kind, tmp_path)
    assert cfg.data.word_ngrams == [1] and cfg.data.char_ngrams == []
    m = results["metrics"]
    for split in ("valid", "test"):
        for k in ("auc", "pr_auc", "logloss", "threshold"):
            assert np.isfinite(m[f"{split}/{k}"]), (split, k)
    assert m["valid/threshold"] == m["test/threshold"]
    path = results["paths"]["export"]
    bundle = load_bundle(path)
    params = bundle.variables["params"]
    assert ("lstm_text_fwd" in params) if kind == "bilstm" else ("encoder_text" in params)
    # The SavedModel (TF tokeniser, hashing, padding) against the JAX forward on the numpy
    # encoding of the same raw strings.
    fast = bundle.predict({"text": np.asarray(HARD_TEXTS, object)})
    saved = saved_model_predict(path, {"text": utf8(HARD_TEXTS)})
    assert saved["prob"].shape == fast["prob"].shape == (len(HARD_TEXTS),)
    np.testing.assert_allclose(saved["prob"], fast["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved["logit"], fast["logit"], rtol=1e-4, atol=1e-5)
    assert len(np.unique(np.round(saved["logit"], 6))) > 3   # the texts score differently
