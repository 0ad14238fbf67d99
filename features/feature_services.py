"""Versioned feature sets: a model version names the service it was trained on.

A service never changes once a model was trained on it; new features get a new
version. Each projection lists its features explicitly.
"""

from feast import FeatureService
from feature_views import item_profile_fv, item_stats_fv, recommendations_fv, user_history_fv, user_profile_fv, user_stats_fv

two_tower_v1 = FeatureService(
    name="two_tower_v1",
    features=[
        user_profile_fv,
        user_stats_fv[["user_n_interactions"]],
        item_profile_fv,
        item_stats_fv[["item_n_interactions"]],
    ],
    description="Static attributes and all-time counts: the features of the first two-tower model.",
    tags={"team": "recsys", "model": "two_tower", "version": "1"},
)

two_tower_v2 = FeatureService(
    name="two_tower_v2",
    features=[user_profile_fv, user_stats_fv, item_profile_fv, item_stats_fv],
    description="v1 plus trailing 7/30-day activity, distinct items, mean ratings, recency and popularity rank.",
    tags={"team": "recsys", "model": "two_tower", "version": "2"},
)

two_tower_online_v1 = FeatureService(
    name="two_tower_online_v1",
    features=[user_profile_fv, user_history_fv],
    description="What a served two-tower model reads per request from the online store: the profile its user tower "
    "encodes, the history bag and the items already seen.",
    tags={"team": "recsys", "model": "two_tower", "version": "1", "use": "serving"},
)

recommendations_v1 = FeatureService(
    name="recommendations_v1",
    features=[recommendations_fv],
    description="The champion's precomputed top-K per user: what an application reads with one key lookup.",
    tags={"team": "recsys", "use": "serving"},
)
