"""recsys_retrain.data.validation: bad rows to quarantine, a window over the bad share fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_retrain.data.validation import validate
from recsys_retrain.errors import ValidationError
from recsys_retrain.settings import DataSettings



class TestValidate:
    @staticmethod
    def window(n: int = 100) -> pd.DataFrame:
        ts = pd.date_range("2024-03-01", periods=n, freq="h", tz="UTC")
        return pd.DataFrame({"user_id": np.arange(n), "item_id": 7, "timestamp": ts, "rating": 3.0, "extra": "x"})

    def test_clean_window_passes_and_writes_nothing(self, tmp_path: Path) -> None:
        df = self.window()
        out = validate(df, DataSettings(), tmp_path / "q.parquet")
        pd.testing.assert_frame_equal(out, df)
        assert not (tmp_path / "q.parquet").exists()

    def test_bad_rows_go_to_quarantine_with_reasons(self, tmp_path: Path) -> None:
        df = self.window()
        df.loc[1, "user_id"] = -5
        df.loc[2, "rating"] = 9.0
        df.loc[3, "timestamp"] = pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2)
        df.loc[5] = df.loc[4]  # duplicate event: the first stays, the copy is quarantined
        out = validate(df, DataSettings(max_bad_share=0.05), tmp_path / "q.parquet")
        assert len(out) == 96 and -5 not in out.user_id.tolist()
        quarantined = pd.read_parquet(tmp_path / "q.parquet")
        assert list(quarantined.columns) == [*df.columns, "reason"]
        assert quarantined.reason.tolist() == [
            "negative user_id", "rating outside [0.0, 5.0]", "timestamp in the future", "duplicate event",
        ]

    def test_too_many_bad_rows_fail_the_window(self, tmp_path: Path) -> None:
        df = self.window()
        df.loc[:4, "rating"] = np.nan
        with pytest.raises(ValidationError) as err:
            validate(df, DataSettings(max_bad_share=0.01), tmp_path / "q.parquet")
        message = str(err.value)
        assert "5 of 100 rows bad" in message and "row 0: null rating" in message and "\n" not in message
        assert len(pd.read_parquet(tmp_path / "q.parquet")) == 5
