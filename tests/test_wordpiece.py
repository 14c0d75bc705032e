"""WordPiece ids: fitted on real SMS training texts, numpy and TensorFlow give the same ids on
real SMS and insult texts and on hard cases, pieces equal the ``tokenizers`` library's own
WordPiece model word for word, ids decode back to the words, the fit is deterministic, and the
spam task's ``data.tokenizer=wordpiece`` option trains, exports and serves raw strings."""
import json
import random

import numpy as np
import pytest

from mlsd_jax.errors import ConfigError
from mlsd_jax.features import text as T
from mlsd_jax.features.wordpiece import WordPiece
from mlsd_jax.tasks import spam as S
from tests.utils import compose_config

LONG = "pneumonoultramicroscopicsilicovolcanoconiosis"   # 45 letters, over max_word_chars
HARD_TEXTS = ["", "FREE entry!! Txt WIN to 80086 now £1000 cash-prize",
              "🙂🎉 Ünïcödé café 日本語 Привет мир مرحبا", "a", "x" * 300 + " yz",
              f"Call 09061701461 {LONG} now", "unbelievably ungrateful reconfirmation",
              "İSTANBUL ǅemal ﬁnally", "spam " * 20000 + "tail"]  # the last one is 100 KB


def utf8(values):
    return np.asarray([v.encode("utf-8") for v in values], dtype=object)


@pytest.fixture(scope="module")
def corpus():
    from mlsd_jax.data.moderation import load_insults
    from mlsd_jax.data.spam import load_sms

    sms = load_sms(seed=0)
    insults = load_insults()
    train = sms.text[sms.splits["train"]]
    texts = list(sms.text[sms.splits["valid"]][:300]) + list(insults.test.text[:300]) + HARD_TEXTS
    return train, np.asarray(texts, object)


@pytest.fixture(scope="module")
def wp(corpus):
    train, _ = corpus
    return WordPiece("text", max_tokens=64, max_word_chars=24).fit(train, 2000)


def test_numpy_and_tensorflow_give_the_same_ids(wp, corpus):
    tf = pytest.importorskip("tensorflow")
    _, texts = corpus
    want = wp.encode_np(texts)
    assert want.shape == (len(texts), 64) and want.dtype == np.int32
    eager = np.asarray(wp.encode_tf(tf.constant(utf8(texts))))
    graph = tf.function(wp.encode_tf, autograph=False,
                        input_signature=[tf.TensorSpec([None], tf.string)])
    np.testing.assert_array_equal(eager, want)
    np.testing.assert_array_equal(np.asarray(graph(tf.constant(utf8(texts)))), want)
    hard = want[-len(HARD_TEXTS):]
    assert np.all(hard[0] == 0)                                # "": padding only
    assert np.all(hard[-1] > 0)                                # 100 KB: cut to max_tokens
    assert (want == wp.unk_id).any() and (want > 0).sum() > 5 * len(texts)
    assert want.max() < wp.cardinality


def test_pieces_equal_the_tokenizers_wordpiece_model(wp, corpus):
    _, texts = corpus
    model = wp.tokenizers_model()
    words = sorted({w for t in texts for w in T.tokenize_np(t, True, wp.max_tokens)})
    assert len(words) > 2000 and LONG in words
    multi = 0
    for w in words:
        theirs = [tok.id + 1 for tok in model.tokenize(w)]
        assert wp.pieces(w) == theirs, w
        multi += len(theirs) > 1
    assert multi > 200                                          # many words are really split
    assert wp.pieces(LONG) == [wp.unk_id]                       # longer than max_word_chars


def test_ids_decode_back_to_the_lowercased_words(wp, corpus):
    train, texts = corpus
    ids = wp.encode_np(train[:400])
    decoded = wp.decode(ids)
    checked = 0
    for text, row, words in zip(train[:400], ids, decoded):
        tokens = T.tokenize_np(text, True)
        if wp.unk_id in row or row[-1] != 0:                   # unknown or cut: not whole
            continue
        assert words == tokens, text
        checked += 1
    assert checked > 300      # every training character is in the vocabulary


def test_unseen_words_become_pieces_or_unk(wp):
    vocab = set(wp.vocab)
    assert "unbelievably" not in vocab
    pieces = [wp.vocab[i - 1] for i in wp.pieces("unbelievably")]
    assert len(pieces) > 1
    assert "".join([pieces[0]] + [p[2:] for p in pieces[1:]]) == "unbelievably"
    assert all(p.startswith("##") for p in pieces[1:]) and not pieces[0].startswith("##")
    assert "ж" not in vocab and wp.pieces("ж") == [wp.unk_id]   # an unseen character
    assert wp.pieces("abcж") == [wp.unk_id]                     # a failing position: all [UNK]
    assert wp.decode(wp.encode_np(["hello ж"])) == [["hello", "[UNK]"]]


def test_json_round_trip_and_errors(wp, corpus):
    _, texts = corpus
    back = WordPiece.from_json(json.loads(json.dumps(wp.to_json())))
    assert back == wp and back.key == "text/wordpiece"
    np.testing.assert_array_equal(back.encode_np(texts), wp.encode_np(texts))
    with pytest.raises(ConfigError, match="vocab_size"):
        WordPiece("text").fit(["hello world"], 5)
    with pytest.raises(ValueError, match="no vocabulary"):
        WordPiece("text").encode_np(["hello"])
    with pytest.raises(ConfigError, match="vocab"):
        WordPiece("text", vocab=("a", "b"))                     # no [UNK]
    with pytest.raises(ConfigError, match="max_word_chars"):
        WordPiece("text", max_word_chars=0)
    with pytest.raises(ConfigError, match="data.tokenizer"):
        S.feature_spec({"tokenizer": "bpe"}, email=False)
    with pytest.raises(ConfigError, match="data.wordpiece_vocab"):
        S.feature_spec({"tokenizer": "wordpiece", "wordpiece_vocab": 5}, email=False,
                       train_columns={"text": np.asarray(["hi"], object)})


def test_fit_is_deterministic_and_order_free(wp, corpus):
    train, _ = corpus
    shuffled = list(train)
    random.Random(1).shuffle(shuffled)
    for texts in (train, shuffled):
        again = WordPiece("text", max_tokens=64, max_word_chars=24).fit(texts, 2000)
        assert again.vocab == wp.vocab
    assert len(wp.vocab) == 2000 and wp.vocab[0] == "[UNK]"


@pytest.mark.slow
def test_spam_text_cnn_on_wordpiece_trains_exports_and_serves_raw_text(tmp_path):
    pytest.importorskip("tensorflow")
    from mlsd_jax.experiment import run
    from mlsd_jax.export import load_bundle, saved_model_predict

    overrides = ["+task=spam", "spam/model=text_cnn", "data.tokenizer=wordpiece",
                 "data.wordpiece_vocab=1000"]
    results = run(compose_config(overrides + ["export.enabled=true"]), workdir=tmp_path)
    assert np.isfinite(results["metrics"]["valid/pr_auc"])
    path = results["paths"]["export"]
    bundle = load_bundle(path)
    chars = bundle.card["features"]["chars"]
    assert [c["type"] for c in chars] == ["WordPiece"] and len(chars[0]["vocab"]) == 1000
    # Raw strings: the SavedModel (TF WordPiece) against the JAX forward on numpy ids.
    saved = saved_model_predict(path, {"text": utf8(HARD_TEXTS)})
    fast = bundle.predict({"text": np.asarray(HARD_TEXTS, object)})
    np.testing.assert_allclose(saved["prob"], fast["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved["logit"], fast["logit"], rtol=1e-4, atol=1e-5)
    # Real validation messages, raw, through both.
    data = S.load_data(compose_config(overrides).data)
    texts = data.columns["text"][data.splits["valid"][:64]]
    saved_real = saved_model_predict(path, {"text": utf8(texts)})
    fast_real = bundle.predict({"text": texts})
    np.testing.assert_allclose(saved_real["prob"], fast_real["prob"], rtol=1e-5, atol=1e-6)
    enc = bundle.encode({"text": texts})
    wp = WordPiece.from_json(chars[0])
    np.testing.assert_array_equal(enc["text"], wp.encode_np(texts))
    np.testing.assert_array_equal(enc["text/mask"], enc["text"] > 0)
    assert results["data"]["bags"] == {"text": 1001}
