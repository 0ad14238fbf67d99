"""recsys_retrain.data.load: any source normalised to RawData; bad files named in one line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recsys_retrain.data.load import RawData, load_interactions, load_movielens
from recsys_retrain.errors import DataError



class TestLoading:
    def test_movielens_from_the_recbole_wheel(self, movielens: RawData) -> None:
        inter, users, items = movielens.interactions, movielens.users, movielens.items
        assert (len(inter), inter.user_id.nunique(), inter.item_id.nunique()) == (100_000, 943, 1682)
        assert inter.dtypes.astype(str).to_dict() == {
            "user_id": "int64", "item_id": "int64", "timestamp": "datetime64[ns, UTC]", "rating": "float64",
        }
        assert inter.rating.between(1, 5).all() and not inter.isna().any().any()
        assert list(users.columns) == ["user_id", "age", "gender", "occupation"] and len(users) == 943
        toy_story = items.set_index("item_id").loc[1]
        assert (toy_story.genres, toy_story.release_year) == ("Animation|Children's|Comedy", 1995)

    @pytest.mark.parametrize("pip_fails", [False, True])
    def test_the_wheel_appears_whole_or_not_at_all(self, tmp_path: Path, monkeypatch, pip_fails: bool) -> None:
        """pip writes into a private folder; only a finished download is renamed into the cache."""
        import subprocess

        from recsys_retrain.data import load

        def fake_pip(cmd, **kwargs):
            target = Path(cmd[cmd.index("-d") + 1])
            assert target.parent == tmp_path and target.name.startswith(".download-")  # never the cache itself
            (target / load._WHEEL_FILE).write_bytes(b"half a wheel" if pip_fails else b"a whole wheel")
            return subprocess.CompletedProcess(cmd, 1 if pip_fails else 0, "", "connection reset" if pip_fails else "")

        monkeypatch.setattr(load.subprocess, "run", fake_pip)
        if pip_fails:
            with pytest.raises(DataError, match="pip download failed \\(connection reset\\)"):
                load._fetch_wheel(tmp_path)
            assert list(tmp_path.iterdir()) == []
        else:
            assert load._fetch_wheel(tmp_path).read_bytes() == b"a whole wheel"
            assert [p.name for p in tmp_path.iterdir()] == [load._WHEEL_FILE]

    def test_grouplens_folder(self, tmp_path: Path) -> None:
        (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t11\t3\t881250950\n")
        genres = "|".join(["0"] * 19)
        comedy = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
        (tmp_path / "u.item").write_bytes(
            f"10|Amélie (2001)|01-Jan-2001||http://x|{comedy}\n11|unknown|||http://y|1|{genres[2:]}\n".encode("latin-1")
        )
        (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
        data = load_movielens(tmp_path / "cache", tmp_path)
        assert data.interactions.timestamp[0] == pd.Timestamp(881250949, unit="s", tz="UTC")
        assert data.items.to_dict("list") == {"item_id": [10, 11], "genres": ["Comedy", ""], "release_year": [2001, 0]}
        assert data.users.gender.tolist() == ["M", "F"]

    def test_csv_log_with_unix_seconds_and_no_rating(self, tmp_path: Path) -> None:
        path = tmp_path / "log.csv"
        pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [0, 86400]}).to_csv(path, index=False)
        df = load_interactions(path)
        assert df.rating.tolist() == [1.0, 1.0]
        assert df.timestamp.tolist() == [pd.Timestamp("1970-01-01", tz="UTC"), pd.Timestamp("1970-01-02", tz="UTC")]

    def test_parquet_log_with_datetime_strings(self, tmp_path: Path) -> None:
        path = tmp_path / "log.parquet"
        pd.DataFrame(
            {"user_id": [1], "item_id": [3], "timestamp": ["2024-03-01T12:00:00+01:00"], "rating": [4.5]}
        ).to_parquet(path)
        df = load_interactions(path)
        assert df.timestamp[0] == pd.Timestamp("2024-03-01 11:00", tz="UTC") and df.rating[0] == 4.5
        assert str(df.timestamp.dtype) == "datetime64[ns, UTC]"


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("interactions.csv", None, "interactions.csv: file not found"),
        ("interactions.json", "{}", "interactions.json: unknown extension '.json'"),
        ("interactions.csv", "user_id,timestamp\n1,0\n", "interactions.csv: missing required column(s) item_id"),
        ("interactions.parquet", b"not parquet", "interactions.parquet: unreadable"),
        ("interactions.csv", "user_id,item_id,timestamp\n1,2,yesterday-ish\n", "interactions.csv: column timestamp"),
        ("interactions.csv", "user_id,item_id,timestamp\nbob,2,0\n", "interactions.csv: column user_id has 1 non-numeric"),
    ],
)
def test_bad_log_says_which_file_and_what(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        write(path, content)
    with pytest.raises(DataError) as err:
        load_interactions(path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bad_grouplens_folder_names_the_missing_file(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "1\t10\t5\t881250949\n")
    with pytest.raises(DataError, match=r"^u\.item: file not found"):
        load_movielens(tmp_path, tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        load_movielens(tmp_path, tmp_path / "u.data")
