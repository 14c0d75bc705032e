"""MovieLens readers: the embedded ML-100k and every upstream layout a user brings, bad lines named."""
import numpy as np
import pytest

from mlsd_jax.data.movielens import MovieLensDataError, load_movielens


def test_embedded_movielens_100k_is_complete():
    ml = load_movielens()
    d = ml.describe()
    assert (d["interactions"], d["users"], d["items"]) == (100_000, 943, 1_682)
    assert set(np.unique(ml.rating)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert ml.users["gender"]["1"] == "M" and ml.users["age"]["1"] == "24"
    assert ml.items["genres"]["1"] == ("Animation", "Children's", "Comedy")
    assert ml.user_column("occupation")[0] == ml.users["occupation"][ml.user_id[0]]


def test_ratings_dat_with_side_files(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n2::661::3::978302109\n")
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (tmp_path / "movies.dat").write_text("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                         "661::James and the Giant Peach (1996)::Animation|Musical\n")
    ml = load_movielens(tmp_path / "ratings.dat")
    assert list(ml.user_id) == ["1", "2"] and list(ml.timestamp) == [978300760, 978302109]
    assert ml.users["gender"] == {"1": "F", "2": "M"}
    assert ml.items["genres"]["661"] == ("Animation", "Musical")
    assert ml.items["year"]["1193"] == "1975"


def test_ratings_csv_and_u_data(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n31,"Dangerous Minds (1995)",Drama\n')
    ml = load_movielens(tmp_path / "ratings.csv")
    assert ml.rating.tolist() == [2.5] and ml.items["title"]["31"] == "Dangerous Minds (1995)"

    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n")
    flags = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
    (tmp_path / "u.item").write_text(f"242|Kolya (1996)|24-Jan-1997||http://x|{flags}\n")
    ml = load_movielens(tmp_path / "u.data")
    assert ml.items["genres"]["242"] == ("Comedy",) and ml.items["year"]["242"] == "1997"


@pytest.mark.parametrize("text,match", [
    ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\tfive\t10\n",
     r"ml\.inter:2: field 'rating' must be a number"),
    ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t2\n",
     r"ml\.inter:2: expected at least 4 fields"),
    ("uid:token\titem_id:token\n1\t2\n", r"lacks fields \['user_id'\]"),
    ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n", "no interactions"),
])
def test_bad_files_name_file_line_and_field(tmp_path, text, match):
    (tmp_path / "ml.inter").write_text(text)
    with pytest.raises(MovieLensDataError, match=match):
        load_movielens(tmp_path / "ml.inter")


def test_unknown_layout_and_missing_path(tmp_path):
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(MovieLensDataError, match="expected a RecBole '.inter' file"):
        load_movielens(tmp_path / "x.parquet")
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_movielens(tmp_path / "missing.inter")
