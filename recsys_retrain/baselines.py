"""Strong simple baselines, scored in the same full-ranking harness as the model.

A neural recommender is only worth retraining if it beats these: most-popular
(the floor every ranking must clear), recent popularity (most-popular over the last
days of the training period: what is watched now, the model's own strongest
feature) and EASE (Steck, 2019), a closed-form item-item linear model that is among
the strongest published baselines on small MovieLens data. All expose the ``catalogue`` / ``score(users)`` interface of
``recsys_retrain.model.Recommender`` so ``recsys_retrain.evaluate.evaluate`` treats them alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


class MostPopular:
    """Ranks every item by its interaction count in the training data, for every user.

    Example:
        >>> train = pd.DataFrame({"user_id": [1, 2, 2], "item_id": [5, 5, 6]})
        >>> MostPopular(train, pd.DataFrame({"item_id": [5, 6, 7]})).score(pd.DataFrame({"user_id": [9]}))
        tensor([[2., 1., 0.]])
    """

    def __init__(self, train: pd.DataFrame, catalogue: pd.DataFrame) -> None:
        self.catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
        counts = train["item_id"].value_counts().reindex(self.catalogue["item_id"]).fillna(0)
        self._scores = torch.tensor(counts.to_numpy(), dtype=torch.float32)

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        return self._scores.expand(len(users), -1).clone()


class RecentPopular:
    """Ranks every item by its interaction count in the last ``days`` days of the training data.

    The window ends at the newest training interaction; ties (items equally often seen
    in the window, e.g. never) are broken by the all-time count. The same ranking for
    every user, cold or warm. Tune ``days`` on a validation window.

    Example:
        >>> t = pd.to_datetime(["2000-01-01", "2000-01-01", "2000-01-09", "2000-01-10", "2000-01-10"], utc=True)
        >>> train = pd.DataFrame({"user_id": [1, 2, 3, 4, 5], "item_id": [5, 5, 6, 7, 7], "timestamp": t})
        >>> recent = RecentPopular(train, pd.DataFrame({"item_id": [5, 6, 7, 8]}), days=7)
        >>> recent.score(pd.DataFrame({"user_id": [9]})).argsort(descending=True).tolist()
        [[2, 1, 0, 3]]
    """

    def __init__(self, train: pd.DataFrame, catalogue: pd.DataFrame, days: float) -> None:
        if days <= 0:
            raise ValueError(f"days must be positive, got {days}")
        self.catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
        self.days = days
        items = self.catalogue["item_id"]
        since = train["timestamp"].max() - pd.Timedelta(days=days)
        recent = train.loc[train["timestamp"] > since, "item_id"].value_counts().reindex(items).fillna(0).to_numpy(np.float64)
        total = train["item_id"].value_counts().reindex(items).fillna(0).to_numpy(np.float64)
        # lexicographic (recent, all-time): the all-time count only orders items of equal recent count
        self._scores = torch.tensor(recent + total / (total.max() + 1.0) if len(total) else recent, dtype=torch.float64)

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        return self._scores.expand(len(users), -1).clone()


class EASE:
    """Embarrassingly Shallow Autoencoder: item-item weights ``B`` in closed form.

    ``B = I - P / diag(P)`` with ``P = (XᵀX + λI)⁻¹`` and a zero diagonal, where X is
    the binary user-item matrix. A user's scores are their history times B; users
    without history fall back to popularity, as a deployed EASE would.

    Args:
        train: interactions (``user_id``, ``item_id``).
        catalogue: rankable items (``item_id``).
        lam: L2 regularisation λ; tune it on a validation window.
    """

    def __init__(self, train: pd.DataFrame, catalogue: pd.DataFrame, lam: float = 500.0) -> None:
        self.catalogue = catalogue.sort_values("item_id").reset_index(drop=True)
        items = pd.Index(self.catalogue["item_id"])
        self.users = pd.Index(sorted(train["user_id"].unique()))
        pairs = train[["user_id", "item_id"]].drop_duplicates()
        cols = items.get_indexer(pairs["item_id"])
        keep = cols >= 0
        x = torch.zeros(len(self.users), len(items), dtype=torch.float64)
        x[torch.from_numpy(self.users.get_indexer(pairs["user_id"][keep])), torch.from_numpy(cols[keep])] = 1.0
        gram = x.T @ x + lam * torch.eye(len(items), dtype=torch.float64)
        p = torch.linalg.inv(gram)
        b = -p / torch.diag(p)
        b.fill_diagonal_(0.0)
        self._x = x.float()
        self._b = b.float()
        self._popular = MostPopular(train, self.catalogue)

    def score(self, users: pd.DataFrame, history: pd.DataFrame | None = None) -> torch.Tensor:
        rows = self.users.get_indexer(np.asarray(users["user_id"]))
        known = torch.from_numpy(rows >= 0)
        scores = self._popular.score(users)
        if bool(known.any()):
            scores[known] = self._x[torch.from_numpy(rows[rows >= 0])] @ self._b
        return scores
