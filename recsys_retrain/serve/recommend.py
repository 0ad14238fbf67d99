"""``retrain recommend``: one registered version's top-K for a few users, as a long table with titles."""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from recsys_retrain.errors import PipelineError
from recsys_retrain.settings import Settings


def served_model(settings: Settings, alias: str = "champion", k: int | None = None, exclude_seen: bool | None = None):
    """``(version, TopK)``: the pyfunc of the version behind ``alias`` (or a version number), reading the online store."""
    from recsys_retrain.registry import candidates
    from recsys_retrain.registry.aliases import read_aliases
    from recsys_retrain.registry.client import connect
    from recsys_retrain.serve.pyfunc import TopK

    if str(alias).isdigit():
        version = int(alias)
    else:
        version = read_aliases(connect(settings), settings.model_name, effective=True).get(alias)
        if version is None:
            raise PipelineError(f"alias {alias!r}: no version of {settings.model_name} behind it (nothing promoted yet?)")
    model = candidates.load_model(settings, version)
    config = {
        "feature_repo": str(settings.feature_repo.resolve()),
        "k": k or settings.serve.k,
        "exclude_seen": settings.serve.exclude_seen if exclude_seen is None else exclude_seen,
    }
    return version, TopK().setup(model, config)


def recommend_table(
    settings: Settings, users: Iterable[int], k: int | None = None, alias: str = "champion", exclude_seen: bool | None = None
) -> tuple[int, pd.DataFrame]:
    """One row per (user, rank): ``user_id, rank, item_id, title, score, source``; titles where the data has them."""
    from recsys_retrain.data.load import item_titles

    version, model = served_model(settings, alias, k, exclude_seen)
    answer = model.predict(None, pd.DataFrame({"user_id": list(users)}))
    long = answer.explode(["item_ids", "scores"]).rename(columns={"item_ids": "item_id", "scores": "score"})
    long["rank"] = long.groupby(level=0).cumcount() + 1
    titles = item_titles(settings.cache_dir, settings.data.source)
    long["title"] = long["item_id"].map(titles).fillna("")
    columns = ["user_id", "rank", "item_id", "title", "score", "source"]
    return version, long[columns].astype({"item_id": "int64", "score": "float64"}).reset_index(drop=True)
