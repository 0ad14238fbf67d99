"""Versioned feature sets: a model version names the service it was trained on."""

from feast import FeatureService
from feature_views import item_profile_fv, item_stats_fv, user_profile_fv, user_stats_fv

two_tower_v1 = FeatureService(
    name="two_tower_v1",
    features=[user_profile_fv, user_stats_fv, item_profile_fv, item_stats_fv],
    description="User and item features of the two-tower retrieval model.",
    tags={"team": "recsys", "model": "two_tower"},
)
