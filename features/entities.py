"""Entities of the recommender: who interacts, and with what."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.INT64,
    description="A user of the recommender.",
    tags={"team": "recsys"},
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.INT64,
    description="An item of the catalogue.",
    tags={"team": "recsys"},
)
