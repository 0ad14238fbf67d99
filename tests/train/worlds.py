"""Tiny synthetic interaction worlds for the training tests: a rule any model that learns can find."""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_world(n_users: int = 40, n_items: int = 60, per_user: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": np.arange(100, 100 + n_items),
            "item_genres": ["A" if i % 2 == 0 else "B" for i in range(n_items)],
            "item_release_year": 1990,
        }
    )
    rows = []
    for u in range(n_users):
        gender = "F" if u % 2 == 0 else "M"
        pool = items[items.item_genres == ("A" if gender == "F" else "B")].item_id.to_numpy()
        for j, item in enumerate(rng.choice(pool, size=per_user, replace=False)):
            rows.append((u + 1, int(item), pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(hours=j), gender))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "user_gender"])
    frame["user_age"], frame["user_occupation"], frame["rating"] = 30, "other", 4.0
    return frame, items


def taste_change_world(n_users: int = 40, n_items: int = 60, weeks: int = 8, changed_from: int = 6, per_week: int = 3):
    """Women watch genre A and men genre B, until week ``changed_from``, when both swap."""
    rng = np.random.default_rng(0)
    items = synthetic_world(n_items=n_items)[1]
    rows = []
    for u in range(n_users):
        gender = "F" if u % 2 == 0 else "M"
        for week in range(weeks):
            genre = "A" if (gender == "F") != (week >= changed_from) else "B"
            for j, item in enumerate(rng.choice(items[items.item_genres == genre].item_id.to_numpy(), per_week, replace=False)):
                when = pd.Timestamp("2020-01-06", tz="UTC") + pd.Timedelta(days=7 * week + 2 * j, hours=u % 24)
                rows.append((u + 1, int(item), when, gender))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "user_gender"])
    frame["user_age"], frame["user_occupation"], frame["rating"] = 30, "other", 4.0
    return frame, items


def genre_taste_world(n_users: int = 60, n_items: int = 240, genres: str = "ABCD", per_user: int = 12, seed: int = 0):
    """Every user keeps to one genre, and nothing else tells them apart (same profile); half the catalogue is never
    watched in training. Returns the training interactions, the catalogue and the unwatched items."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": np.arange(1000, 1000 + n_items),
                          "item_genres": [genres[i % len(genres)] for i in range(n_items)], "item_release_year": 1990})
    watched = items.iloc[: n_items // 2]
    rows = []
    for u in range(n_users):
        pool = watched[watched.item_genres == genres[u % len(genres)]].item_id.to_numpy()
        for j, item in enumerate(rng.choice(pool, size=per_user, replace=False)):
            rows.append((u + 1, int(item), pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(hours=j)))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    frame["user_gender"], frame["user_age"], frame["user_occupation"], frame["rating"] = "F", 30, "other", 4.0
    return frame, items, items.iloc[n_items // 2 :]
