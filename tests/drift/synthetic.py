"""Synthetic windows for the drift specs, shaped like MovieLens-100K.

The windows are synthetic but shaped like MovieLens-100K: 943 users and 1,682 items,
Zipf-like item popularity (popular items are recent ones), log-normal user activity,
ratings from item quality plus noise, a daily rhythm, and "|"-joined genres.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from recsys_retrain.drift.verdict import DriftReport

GENRES = (
    "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
OCCUPATIONS = ("student", "engineer", "educator", "programmer", "writer", "other", "none")
START = pd.Timestamp("1998-01-05", tz="UTC")


def make_world(seed: int = 0, n_users: int = 943, n_items: int = 1682) -> dict[str, pd.DataFrame]:
    """Users and items shared by every window drawn from this world."""
    rng = np.random.default_rng(seed)
    rank = rng.permutation(n_items) + 1  # 1 = most popular
    items = pd.DataFrame(
        {
            "item_id": np.arange(1, n_items + 1, dtype="int64"),
            "popularity": 1.0 / rank**0.9,
            "quality": rng.normal(3.5, 0.5, n_items),
            "item_release_year": (1998 - rank / n_items * 40 - rng.exponential(3, n_items)).astype("int64"),
            "item_genres": ["|".join(rng.choice(GENRES, rng.integers(0, 4), replace=False)) for _ in range(n_items)],
        }
    )
    items.loc[rng.random(n_items) < 0.01, "item_release_year"] = 0  # unknown year
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype="int64"),
            "activity": rng.lognormal(0, 1, n_users),
            "bias": rng.normal(0, 0.4, n_users),
            "user_age": rng.integers(7, 74, n_users).astype("int64"),
            "user_gender": rng.choice(["M", "F"], n_users, p=[0.7, 0.3]),
            "user_occupation": rng.choice(OCCUPATIONS, n_users),
        }
    )
    return {"items": items, "users": users}


def make_window(
    world: dict[str, pd.DataFrame],
    n: int,
    *,
    seed: int,
    start: pd.Timestamp = START,
    days: float = 7.0,
    rating_shift: float = 0.0,
    long_tail: bool = False,
) -> pd.DataFrame:
    """A window in the data stage's contract; ``long_tail`` turns popularity upside down."""
    rng = np.random.default_rng(seed)
    items, users = world["items"], world["users"]
    pop = items["popularity"].to_numpy()
    pop = 1.0 / pop if long_tail else pop
    item = items.iloc[rng.choice(len(items), n, p=pop / pop.sum())].reset_index(drop=True)
    act = users["activity"].to_numpy()
    user = users.iloc[rng.choice(len(users), n, p=act / act.sum())].reset_index(drop=True)
    hour_weight = 1.0 + np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False) - 2.0)
    hours = rng.choice(24, n, p=hour_weight / hour_weight.sum())
    offset = rng.integers(0, int(days), n) * 86_400 + hours * 3_600 + rng.integers(0, 3_600, n)
    noise = rng.normal(0, 0.8, n)
    window = pd.DataFrame(
        {
            "user_id": user["user_id"],
            "item_id": item["item_id"],
            "timestamp": start + pd.to_timedelta(np.minimum(offset, days * 86_400 - 1), unit="s"),
            "rating": np.clip(np.round(item["quality"] + user["bias"] + noise + rating_shift), 1, 5).astype("float64"),
            "user_age": user["user_age"],
            "user_gender": user["user_gender"],
            "user_occupation": user["user_occupation"],
            "item_genres": item["item_genres"],
            "item_release_year": item["item_release_year"],
        }
    )
    window["user_n_interactions"] = window.groupby("user_id")["item_id"].transform("size").astype("int64")
    window["item_n_interactions"] = window.groupby("item_id")["user_id"].transform("size").astype("int64")
    return window.sort_values("timestamp", ignore_index=True)


def assert_no_nan(value: object, where: str = "report") -> None:
    """Every number in a report dict is finite, at any depth."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert_no_nan(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            assert_no_nan(v, f"{where}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), f"{where} is {value}"


def signal(report: DriftReport, name: str):
    return next(s for s in report.signals if s.name == name)


NEXT = START + pd.Timedelta(days=28)
