"""The spam / fraud / moderation data layer: real corpora (fetched from package registries),
the e-mail parser, dedupe and group-aware splits, and the readers of user files."""
import collections
import email.message
import mailbox
import re

import numpy as np
import pytest

from mlsd_jax.data import dedupe, moderation, spam


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def corpus():
    return spam.load_spamassassin(seed=0)


@pytest.fixture(scope="module")
def insults():
    return moderation.load_insults(seed=0)


def _row(c, folder, name_prefix):
    hits = [i for i in range(len(c)) if c.source[i] == folder and c.name[i].startswith(name_prefix)]
    assert len(hits) == 1, (folder, name_prefix, hits)
    return hits[0]


def _assert_groups_on_one_side(groups, splits):
    seen = {}
    for name, rows in splits.items():
        for g in np.unique(groups[rows]):
            assert seen.setdefault(int(g), name) == name, f"cluster {g} in {seen[int(g)]} and {name}"


# ---------------------------------------------------------------------------- SpamAssassin
def test_spamassassin_counts(corpus):
    assert len(corpus) == 6046
    assert np.bincount(corpus.label).tolist() == [4150, 1896]
    assert dict(collections.Counter(corpus.source.tolist())) == {
        "easy-ham-1": 2500, "easy-ham-2": 1400, "hard-ham-1": 250, "spam-1": 500, "spam-2": 1396}
    for folder, label in spam.SPAM_ASSASSIN_FOLDERS.items():
        assert set(corpus.label[corpus.source == folder].tolist()) == {label}
    assert all(re.fullmatch(r"\d{5}\.[0-9a-f]{32}", n) for n in corpus.name)
    # the raw bytes parse without an exception; MIME defects are found and named
    assert not any(corpus.parse_error)
    assert 50 <= sum("CloseBoundaryNotFoundDefect" in d for d in corpus.defects) <= 80
    assert 150 <= sum(bool(n) for n in corpus.charset_note) <= 260
    assert (~np.isnat(corpus.date)).sum() >= 6040
    dated = corpus.date[~np.isnat(corpus.date)]
    assert dated.min() >= np.datetime64("1970-01-01")   # "102" years read as 2002
    in_years = (dated >= np.datetime64("2000-01-01")) & (dated < np.datetime64("2004-01-01"))
    assert in_years.mean() > 0.99
    assert (corpus.from_domain != "").sum() >= 6040
    # spam is far more often HTML than ham
    assert corpus.has_html[corpus.label == 1].mean() > 0.4 > corpus.has_html[corpus.label == 0].mean()


def test_real_html_only_multipart_and_attachment(corpus):
    i = _row(corpus, "easy-ham-2", "00947.")   # a single text/html part
    assert corpus.has_html[i] and corpus.html_share[i] == 1.0 and corpus.n_parts[i] == 1
    assert corpus.text[i] == "" and corpus.body[i] == corpus.html_text[i]
    assert "http://www.informationweek.com/story/IWK20020723S0005" in corpus.body[i]
    assert "<" not in corpus.body[i] and corpus.n_links[i] == 2
    j = _row(corpus, "easy-ham-1", "00062.")   # multipart/alternative: plain + html
    assert corpus.n_parts[j] == 2 and corpus.has_html[j] and 0 < corpus.html_share[j] < 1
    assert corpus.text[j].startswith("I'm using Simple DNS from JHSoft.")
    assert corpus.html_text[j].startswith("I'm using Simple DNS from JHSoft.")
    assert corpus.body[j] == corpus.text[j] and corpus.subject[j] == "Tiny DNS Swap"
    k = _row(corpus, "easy-ham-1", "00775.")
    assert corpus.attachments[k] == ["Liberalism in America.url"]
    assert corpus.attachment_types[k] == ["application/octet-stream"]
    h = _row(corpus, "hard-ham-1", "00007.")   # German HTML newsletter (hard ham)
    assert corpus.label[h] == 0 and corpus.has_html[h] and corpus.n_links[h] >= 10


_WANTED = {"package/data/spam-2/00001.317e78fa8ee2f54cd4890fdc09ba8176.txt",
           "package/data/easy-ham-1/00062.009f5a1a8fa88f0b38299ad01562bb37.txt"}


@pytest.fixture(scope="module")
def raw_messages(corpus):
    """Raw bytes of the two messages above and of every 40th archive member that is a message."""
    import tarfile

    out = {}
    with tarfile.open(spam._spamassassin_archive()) as tar:
        for k, m in enumerate(tar):
            if m.name.endswith(".txt") and m.name.count("/") == 3 and (m.name in _WANTED or k % 40 == 0):
                out[m.name] = tar.extractfile(m).read()
    return out


def test_cached_parse_matches_a_fresh_parse(corpus, raw_messages):
    assert set(raw_messages) >= _WANTED
    for member in sorted(_WANTED):
        folder, name = member.split("/")[2], member.split("/")[3][:-4]
        i = _row(corpus, folder, name)
        fresh = spam.parse_email(raw_messages[member])
        for key, value in fresh.items():
            got = getattr(corpus, key)[i]
            if key == "date":
                assert got == value
            elif key == "html_share":
                assert got == pytest.approx(value, rel=1e-6)
            else:
                assert got == value, key


def test_parser_survives_damaged_real_messages(raw_messages):
    """Real messages truncated, with random bytes overwritten, or with bogus charsets and
    boundaries: every one yields a record, none raises."""
    rng = np.random.default_rng(0)
    assert len(raw_messages) > 100
    fields = set(spam.parse_email(b"").keys())
    for raw in raw_messages.values():
        cut = raw[:int(rng.integers(1, len(raw)))]
        noisy = bytearray(raw)
        for i in rng.integers(0, len(raw), size=max(1, len(raw) // 50)):
            noisy[i] = int(rng.integers(0, 256))
        bogus = raw.replace(b"charset=", b"charset=x-bogus-").replace(b"boundary=", b"boundary=zz")
        for damaged in (cut, bytes(noisy), bogus):
            rec = spam.parse_email(damaged)
            assert set(rec) == fields and isinstance(rec["body"], str)
    rec = spam.parse_email(raw_messages[sorted(_WANTED)[0]].replace(b"charset=", b"charset=x-bogus-"))
    assert "unknown charset 'x-bogus-" in rec["charset_note"]


# -------------------------------------------------------------------------- e-mail parser
def test_parser_bad_charset_and_raw_header_bytes():
    raw = (b"From: Shop <deals@Shop.Example.COM>\r\nTo: a@x.org, b@y.org\r\nCc: c@z.org\r\n"
           b"Subject: caf\xc3\xa9 prices\r\nDate: Tue, 06 Aug 2002 10:00:00 +0200\r\n"
           b"Content-Type: text/plain; charset=\"x-nonsense\"\r\n\r\n"
           b"Prix: 10\xe9 http://spam.example/buy now\r\n")
    r = spam.parse_email(raw)
    assert r["subject"] == "café prices"
    assert r["from_addr"] == "deals@shop.example.com" and r["from_domain"] == "shop.example.com"
    assert (r["n_to"], r["n_cc"]) == (2, 1)
    assert r["date"] == np.datetime64("2002-08-06T08:00:00")
    assert r["text"] == "Prix: 10é http://spam.example/buy now"
    assert "unknown charset 'x-nonsense'" in r["charset_note"] and "latin-1" in r["charset_note"]
    assert r["n_links"] == 1 and r["parse_error"] == ""
    ascii_lie = raw.replace(b"x-nonsense", b"us-ascii")
    r = spam.parse_email(ascii_lie)
    assert "bytes invalid in declared charset 'us-ascii'" in r["charset_note"]
    assert r["text"].startswith("Prix: 10é")


def test_parser_truncated_mime_and_broken_headers():
    truncated = (b"From: a@x.org\nSubject: truncated\nMIME-Version: 1.0\n"
                 b"Content-Type: multipart/alternative; boundary=\"XYZ\"\n\n--XYZ\n"
                 b"Content-Type: text/plain; charset=utf-8\n\nhello, see https://a.example/x.\n"
                 b"--XYZ\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n"
                 b"PGh0bWw+PGJvZHk+PGEgaHJlZj0iaHR0cDovL2IuZXhhbXBsZS95Ij5jbGljazwvYT48c2NyaXB0PmFs")
    r = spam.parse_email(truncated)
    assert "CloseBoundaryNotFoundDefect" in r["defects"]
    assert r["text"] == "hello, see https://a.example/x." and r["has_html"]
    assert r["html_text"] == "click" and r["n_links"] == 2 and r["n_parts"] == 2
    broken = b"Subject: x\nFrom: <<<@@@>>>\nTo: ;;;,,,<\nDate: Mon, 99 Foo 2002 99:99\n\nbody"
    r = spam.parse_email(broken)
    assert r["body"] == "body" and np.isnat(r["date"])
    assert r["parse_error"].startswith("to header: ") and "raw value" in r["parse_error"]
    for junk in (b"", b"\x00\xff\xfe not a message", bytes(range(256)) * 4):
        r = spam.parse_email(junk)
        assert set(r) >= {"subject", "body", "parse_error", "defects"}
    r = spam.parse_email("a str, not bytes")
    assert r["parse_error"] == "expected the message as bytes, got str"


def test_html_to_text():
    text, links = spam.html_to_text(
        '<html><head><style>p {color: red}</style><script>var x = "<b>";</script></head>'
        '<body><p>Buy&nbsp;now &amp; save</p><a href="https://x.example/a">here</a>'
        '<img src="http://img.example/p.gif"><div>line two</div></body></html>')
    assert text == "Buy now & save\nhere\nline two"
    assert links == ["https://x.example/a", "http://img.example/p.gif"]
    text, _ = spam.html_to_text("<p>unclosed <b>bold <i>and <a href='mailto:x'>more")
    assert text == "unclosed bold and more"


# --------------------------------------------------------------------------- dedupe, splits
def test_dedupe_and_group_split_on_real_mail(corpus):
    rep = corpus.dedupe
    assert rep.n_exact_duplicates == 297 and 400 <= rep.n_near_duplicate_pairs <= 700
    assert rep.summary()["exact_duplicates"] == 297
    exact = np.flatnonzero(corpus.exact_of >= 0)
    assert np.all(corpus.exact_of[exact] < exact)
    norm = lambda i: dedupe.normalise_text(corpus.body[i])  # noqa: E731
    assert all(norm(i) == norm(corpus.exact_of[i]) for i in exact)
    all_rows = np.concatenate(list(corpus.splits.values()))
    assert len(all_rows) == len(set(all_rows.tolist())) == 6046 - 297
    assert not set(exact.tolist()) & set(all_rows.tolist())
    _assert_groups_on_one_side(corpus.cluster, corpus.splits)
    # each verified pair really has word 5-shingle Jaccard >= 0.9 (independent recomputation)
    def shingles(i):
        w = re.findall(r"\w+", norm(i))
        return {tuple(w[k:k + 5]) for k in range(len(w) - 4)} or {tuple(w)}
    for i, j, jac in rep.near_pairs[:40]:
        a, b = shingles(i), shingles(j)
        assert len(a & b) / len(a | b) == pytest.approx(jac, abs=1e-3) and jac >= 0.9
        assert corpus.cluster[i] == corpus.cluster[j]


def test_split_is_seeded_and_stratified(corpus):
    again = spam.load_spamassassin(seed=0)
    other = spam.load_spamassassin(seed=1)
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(again.splits[k], corpus.splits[k])
    assert not np.array_equal(other.splits["test"], corpus.splits["test"])
    kept = 6046 - 297
    rate = corpus.label[np.concatenate(list(corpus.splits.values()))].mean()
    for k, frac in (("train", 0.7), ("valid", 0.1), ("test", 0.2)):
        rows = corpus.splits[k]
        assert abs(len(rows) / kept - frac) < 0.01, k
        assert abs(corpus.label[rows].mean() - rate) < 0.01, k
    two = spam.load_spamassassin(seed=0, fractions={"train": 0.8, "test": 0.2})
    assert set(two.splits) == {"train", "test"}
    assert abs(len(two.splits["test"]) / kept - 0.2) < 0.01


def test_find_duplicates_and_group_split_small():
    words = [f"w{i}" for i in range(200)]
    base = " ".join(words)
    near = " ".join(words[:199] + ["changed"])        # Jaccard 195/197 of 5-shingles
    far = " ".join(words[:100] + [f"x{i}" for i in range(100)])
    texts = [base, "  " + base.upper() + "\n", near, far, "", "   ", "short one", "Short  ONE"]
    rep = dedupe.find_duplicates(texts, labels=[1, 1, 0, 1, 0, 0, 1, 1])
    assert rep.exact_of.tolist() == [-1, 0, -1, -1, -1, -1, -1, 6]
    assert [(i, j) for i, j, _ in rep.near_pairs] == [(0, 2)]
    assert rep.near_pairs[0][2] == pytest.approx(195 / 197, abs=1e-4)
    assert rep.cluster.tolist() == [0, 0, 0, 3, 4, 5, 6, 6]
    assert rep.n_empty == 2 and rep.label_conflicts == 1
    with pytest.raises(ValueError, match="threshold"):
        dedupe.find_duplicates(texts, threshold=1.5)
    labels = np.repeat([0, 1], 500)
    groups = np.arange(1000) // 4
    parts = dedupe.group_stratified_split(labels, groups, {"a": 0.5, "b": 0.3, "c": 0.2}, seed=3)
    _assert_groups_on_one_side(groups, parts)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(1000))
    for k, f in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(len(parts[k]) - 1000 * f) <= 8 and abs(labels[parts[k]].mean() - 0.5) < 0.02
    same = dedupe.group_stratified_split(labels, groups, {"a": 0.5, "b": 0.3, "c": 0.2}, seed=3)
    assert all(np.array_equal(parts[k], same[k]) for k in parts)


# ---------------------------------------------------------------------- user mail folders
def _message(subject, body, sender="someone@example.org"):
    m = email.message.EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, "me@example.net", subject
    m.set_content(body)
    return m


def test_read_mail_folders(tmp_path):
    spam_box = mailbox.Maildir(tmp_path / "spam", create=True)
    for i in range(6):
        spam_box.add(_message(f"offer {i}", f"cheap pills number {i} at http://pills.example/{i}"))
    spam_box.add(_message("offer 0 again", "cheap pills number 0 at http://pills.example/0"))
    ham_mbox = mailbox.mbox(tmp_path / "ham.mbox", create=True)
    for i in range(5):
        ham_mbox.add(_message(f"meeting {i}", f"see you at {i} o'clock, bring the report {i}"))
    ham_mbox.flush()
    ham_mbox.close()
    eml = tmp_path / "eml"
    eml.mkdir()
    for i in range(4):
        (eml / f"m{i}.eml").write_bytes(bytes(_message(f"lunch {i}", f"lunch plans {i} today")))
    (eml / ".hidden").write_bytes(b"not a message")
    c = spam.read_mail_folders({tmp_path / "spam": "spam", tmp_path / "ham.mbox": 0, eml: "ham"},
                               seed=1)
    assert len(c) == 16 and c.label.sum() == 7
    assert collections.Counter(c.source.tolist())[str(eml)] == 4
    assert sorted(c.name[c.source == str(eml)].tolist()) == [f"m{i}.eml" for i in range(4)]
    assert c.dedupe.n_exact_duplicates == 1 and c.from_domain[0] == "example.org"
    assert sum(len(v) for v in c.splits.values()) == 15
    with pytest.raises(spam.SpamFormatError, match="label for mail folder"):
        spam.read_mail_folders({eml: "maybe"})
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(spam.SpamFormatError, match=r"notes.txt:1: not an mbox file"):
        spam.read_mail_folders({tmp_path / "notes.txt": 1})


# -------------------------------------------------------------------------------------- SMS
def test_sms_collection():
    s = spam.load_sms(seed=0)
    assert len(s) == 4862 and int(s.label.sum()) == 642
    quoted = [i for i in range(len(s)) if s.raw[i].startswith('"') and s.raw[i].endswith('"')]
    assert len(quoted) == 75
    i = next(i for i in quoted if s.raw[i].startswith('"Superb Thought'))
    assert s.text[i].startswith('Superb Thought- "Be grateful that u dont have everything')
    assert s.text[i].endswith('than u are today.":-)')
    assert sum("&lt;" in t for t in s.raw) > 100 and not any("&lt;" in t for t in s.text)
    assert s.dedupe.n_exact_duplicates > 250
    rows = np.concatenate(list(s.splits.values()))
    assert len(rows) == 4862 - s.dedupe.n_exact_duplicates
    _assert_groups_on_one_side(s.cluster, s.splits)
    rate = s.label[rows].mean()
    assert all(abs(s.label[v].mean() - rate) < 0.01 for v in s.splits.values())


def test_sms_reader_user_file(tmp_path):
    p = tmp_path / "SMSSpamCollection"
    p.write_text("ham\tOk lar... Joking wif u oni...\nspam\tWIN a &lt;prize&gt; &amp; more\n\n"
                 "ham\tsee you\r\n", encoding="utf-8")
    text, raw, label, line = spam.read_sms_collection(p)
    assert text.tolist() == ["Ok lar... Joking wif u oni...", "WIN a <prize> & more", "see you"]
    assert label.tolist() == [0, 1, 0] and line.tolist() == [1, 2, 4]
    p.write_text("ham\tfine\nSPAM\tbad label\n")
    with pytest.raises(spam.SpamFormatError, match=r"SMSSpamCollection:2: field label: 'SPAM'"):
        spam.read_sms_collection(p)
    p.write_text("ham no tab here\n")
    with pytest.raises(spam.SpamFormatError, match=r":1: no tab"):
        spam.read_sms_collection(p)


# --------------------------------------------------------------------------------- Spambase
def test_spambase():
    b = spam.load_spambase(seed=0)
    assert b.features.shape == (4601, 57) and int(b.label.sum()) == 1813
    assert b.feature_names[:3] == ("make", "address", "all")
    assert b.feature_names[-3:] == ("capitalAve", "capitalLong", "capitalTotal")
    assert np.isfinite(b.features).all() and (b.features >= 0).all()
    dup = np.flatnonzero(b.duplicate_of >= 0)
    assert len(dup) == 391
    np.testing.assert_array_equal(b.features[dup], b.features[b.duplicate_of[dup]])
    rows = np.concatenate(list(b.splits.values()))
    assert len(rows) == 4601 - 391 and not set(dup.tolist()) & set(rows.tolist())
    rate = b.label[rows].mean()
    assert all(abs(b.label[v].mean() - rate) < 0.01 for v in b.splits.values())


# ------------------------------------------------------------------------------- credit card
def _generated_creditcard(path, n, seed=0):
    """A GENERATED file in the exact Kaggle creditcard.csv format (random values)."""
    rng = np.random.default_rng(seed)
    time = np.sort(rng.integers(0, 172_800, n)).astype(float)
    v = rng.normal(size=(n, 28))
    amount = np.round(rng.gamma(2.0, 40.0, n), 2)
    label = (rng.random(n) < 0.02).astype(int)
    lines = [",".join(f'"{c}"' for c in spam.CREDITCARD_COLUMNS)]
    for i in range(n):
        lines.append(",".join([f"{time[i]:g}", *(repr(float(x)) for x in v[i]), f"{amount[i]:g}",
                               f'"{label[i]}"']))
    path.write_text("\n".join(lines) + "\n")
    return lines, time, v, amount, label


def test_creditcard_stream_generated(tmp_path):
    p = tmp_path / "creditcard.csv"
    lines, time, v, amount, label = _generated_creditcard(p, 3000)
    chunks = list(spam.iter_creditcard(p, block_size=64 << 10))
    assert len(chunks) > 3 and max(len(c) for c in chunks) < 3000
    assert [c.first_line for c in chunks] == list(2 + np.cumsum([0] + [len(c) for c in chunks[:-1]]))
    full = spam.read_creditcard(p)
    np.testing.assert_array_equal(full.time, time)
    np.testing.assert_allclose(full.features, v.astype(np.float32))
    np.testing.assert_array_equal(full.amount, amount)
    np.testing.assert_array_equal(full.label, label)
    bad_cases = [(3, "abc", r":1502: column V3: 'abc'; expected a number"),
                 (30, '"2"', r":1502: column Class: '2'; expected the class"),
                 (29, "", r":1502: column Amount: ''; expected a number"),
                 (5, "nan", r":1502: column V5: 'nan'; expected a finite number")]
    for col, value, msg in bad_cases:
        bad = list(lines)
        fields = bad[1501].split(",")
        fields[col] = value
        bad[1501] = ",".join(fields)
        p.write_text("\n".join(bad) + "\n")
        with pytest.raises(spam.SpamFormatError, match=re.escape(str(p)) + msg):
            spam.read_creditcard(p, block_size=64 << 10)
    p.write_text("\n".join(lines[:10] + [lines[10].rsplit(",", 1)[0]] + lines[11:]) + "\n")
    with pytest.raises(spam.SpamFormatError, match=r":11: 30 fields; expected 31"):
        spam.read_creditcard(p)
    p.write_text("\n".join([lines[0].replace('"V7"', '"V8"')] + lines[1:]) + "\n")
    with pytest.raises(spam.SpamFormatError, match=r":1: header: column 8 is 'V8', expected 'V7'"):
        spam.read_creditcard(p)


# ------------------------------------------------------------------------------------ insults
def test_insults_counts(insults):
    tr, te = insults.train, insults.test
    assert (len(tr), len(te)) == (3947, 2647)
    assert (int(tr.label.sum()), int(te.label.sum())) == (1049, 693)
    assert (int(np.isnat(tr.date).sum()), int(np.isnat(te.date).sum())) == (718, 524)
    assert collections.Counter(te.usage.tolist()) == {"PrivateTest": 1985, "PublicTest": 662}
    assert set(tr.usage.tolist()) == {""}
    assert tr.date[0] == np.datetime64("2012-06-18T19:21:55") and tr.text[0] == "You fuck your dad."


def test_insults_escaped_text_decoding(insults):
    tr = insults.train
    i = next(i for i in range(len(tr)) if "A\\\\xc2\\\\xa0majority of Canadians" in tr.raw[i])
    assert tr.text[i].startswith("A\xa0majority of Canadians can and has been wrong before now")
    assert "will be again.\n\nUnless you're supportive" in tr.text[i]
    j = next(i for i in range(len(tr)) if "C\\xe1c b\\u1ea1n" in tr.raw[i])
    assert tr.text[j].startswith("Các bạn xuống đường biểu tình 2011 có ôn hoà không ? \nCác")
    k = next(i for i in range(len(tr)) if tr.raw[i].startswith('"i really don\'t understand'))
    assert tr.text[k] == "i really don't understand your point.\xa0 It seems that you are mixing apples and oranges."
    escape = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|n)")
    for part in (insults.train, insults.test):
        assert not any(escape.search(t) for t in part.text)
        assert not any(t.startswith('"') and t.endswith('"') and len(t) > 1 and t.count('"') == 2
                       for t in part.text)
    assert moderation.decode_comment('"a\\\\\\\\n b \\\\\'c\\\\\' \\ud83d\\ude00 \\\\p \\xe9"') == \
        "a\n b 'c' \U0001F600 \\p é"


def test_insults_splits(insults):
    sp = insults.splits
    assert set(sp) == {"train", "valid", "test"} and len(sp["test"]) == 2647
    tr, va = sp["train"], sp["valid"]
    assert not set(tr.tolist()) & set(va.tolist())
    dropped = set(np.flatnonzero(insults.dedupe.exact_of >= 0).tolist()) | set(
        insults.test_overlap.tolist())
    assert len(tr) + len(va) == 3947 - len(dropped) and not dropped & set(tr.tolist() + va.tolist())
    assert abs(len(va) / (len(tr) + len(va)) - 0.1) < 0.01
    lab = insults.train.label
    assert abs(lab[va].mean() - lab[tr].mean()) < 0.02
    _assert_groups_on_one_side(insults.dedupe.cluster, {"train": tr, "valid": va})
    again = moderation.load_insults(seed=0)
    np.testing.assert_array_equal(again.splits["valid"], va)
    assert not np.array_equal(moderation.load_insults(seed=5).splits["valid"], va)


# ------------------------------------------------------------------------------------- Jigsaw
_JIGSAW = ('"id","comment_text","toxic","severe_toxic","obscene","threat","insult","identity_hate"\n'
           '"0000997932d777bf","Explanation\nWhy the edits made under my username were reverted?\n'
           '""Quoted"" words, and a comma.",0,0,0,0,0,0\n'
           '"000103f0d9cfb60f","D\'aww! He matches this background colour",0,0,0,0,0,0\n'
           '"0002bcb3da6cb337","COCKSUCKER BEFORE YOU PISS AROUND ON MY WORK",1,1,1,0,1,0\n')


def test_jigsaw_reader_generated(tmp_path):
    p = tmp_path / "train.csv"   # GENERATED in the exact Jigsaw train.csv format
    p.write_text(_JIGSAW, encoding="utf-8")
    j = moderation.read_jigsaw(p)
    assert j.id.tolist() == ["0000997932d777bf", "000103f0d9cfb60f", "0002bcb3da6cb337"]
    assert j.text[0] == ('Explanation\nWhy the edits made under my username were reverted?\n'
                         '"Quoted" words, and a comma.')
    assert j.line.tolist() == [2, 5, 6]
    assert j.labels.tolist()[2] == [1, 1, 1, 0, 1, 0] and j.label("insult").tolist() == [0, 0, 1]
    p.write_text(_JIGSAW.replace(",1,1,1,0,1,0", ",1,1,2,0,1,0"))
    with pytest.raises(moderation.ModerationFormatError, match=r"train.csv:6: field obscene: '2'"):
        moderation.read_jigsaw(p)
    p.write_text(_JIGSAW.replace("000103f0d9cfb60f", "0000997932d777bf"))
    with pytest.raises(moderation.ModerationFormatError, match=r":5: field id: .* line 2"):
        moderation.read_jigsaw(p)
    p.write_text(_JIGSAW.replace(",0,0,0,0,0,0\n\"000103", ",0,0,0,0,0\n\"000103"))
    with pytest.raises(moderation.ModerationFormatError, match=r":2: 7 fields; expected 8"):
        moderation.read_jigsaw(p)
    p.write_text(_JIGSAW.replace('"comment_text"', '"text"'))
    with pytest.raises(moderation.ModerationFormatError, match=r":1: header"):
        moderation.read_jigsaw(p)


def test_insults_reader_errors(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text('Insult,Date,Comment\n1,20120618192155Z,"""ok"""\n2,,"""x"""\n')
    with pytest.raises(moderation.ModerationFormatError, match=r"train.csv:3: field Insult: '2'"):
        moderation.read_insults_csv(p)
    p.write_text('Insult,Date,Comment\n1,2012-06-18,"""ok"""\n')
    with pytest.raises(moderation.ModerationFormatError, match=r":2: field Date: '2012-06-18'"):
        moderation.read_insults_csv(p)
