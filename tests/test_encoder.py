"""The feature encoder's user rows: the history bag and the genre bag it gives, for every way a model is fed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsys_retrain.encoder import USER_FEATURES, FeatureEncoder

ITEMS = pd.DataFrame({"item_id": [30, 10, 20], "item_genres": ["War", "Drama|War", ""], "item_release_year": 1990})
USERS = pd.DataFrame({"user_id": [1, 2], "user_gender": ["F", "M"], "user_age": [30, 40], "user_occupation": ["x", "y"]})


def bags(kjt, feature: str) -> list[list[int]]:
    jt = kjt[feature]
    return [v.tolist() for v in jt.to_dense()]


class TestGenreBag:
    def test_fit_keeps_each_items_genres_in_catalogue_row_order(self):
        enc = FeatureEncoder.fit(USERS, ITEMS)
        assert enc.item_ids == (10, 20, 30) and enc.item_genres == ("Drama|War", "", "War")
        assert enc.num_embeddings["user_genres"] == len(enc.genres) + 1 == 3

    def test_the_genre_bag_holds_the_genres_of_the_history_items_and_an_item_without_genres_adds_none(self):
        enc = FeatureEncoder.fit(USERS, ITEMS)
        history = (enc.item_rows([10, 20, 30, 30]), np.array([3, 1]))  # user 1: items 10, 20, 30; user 2: 30
        kjt = enc.user_kjt(USERS, history)
        assert kjt.keys() == list(USER_FEATURES)
        assert bags(kjt, "user_history") == [[1, 2, 3], [3]]
        assert bags(kjt, "user_genres") == [[1, 2, 2], [2]]  # Drama, War (item 10), War (item 30); item 20 none

    def test_no_history_gives_empty_bags(self):
        kjt = FeatureEncoder.fit(USERS, ITEMS).user_kjt(USERS)
        assert kjt["user_genres"].lengths().tolist() == [0, 0] and kjt["user_history"].lengths().tolist() == [0, 0]

    def test_the_histories_of_interactions_give_the_same_bags_as_their_rows(self):
        enc = FeatureEncoder.fit(USERS, ITEMS)
        seen = pd.DataFrame({"user_id": [2, 1, 2], "item_id": [10, 30, 20],
                             "timestamp": pd.to_datetime(["2000-01-01", "2000-01-02", "2000-01-03"], utc=True)})
        kjt = enc.user_kjt(USERS, enc.histories(seen, USERS["user_id"]))
        assert bags(kjt, "user_genres") == [[2], [1, 2]]

    def test_the_encoder_round_trips_through_its_dict_and_an_older_dict_gives_empty_genre_bags(self):
        enc = FeatureEncoder.fit(USERS, ITEMS)
        assert FeatureEncoder.from_dict(enc.to_dict()) == enc
        older = {k: v for k, v in enc.to_dict().items() if k != "item_genres"}  # saved before the genre bag
        kjt = FeatureEncoder.from_dict(older).user_kjt(USERS, (np.array([0, 2]), np.array([1, 1])))
        assert kjt["user_genres"].lengths().tolist() == [0, 0] and bags(kjt, "user_history") == [[1], [3]]
