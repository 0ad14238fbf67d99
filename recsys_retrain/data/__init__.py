"""Interactions in, point-in-time feature windows out.

Import each name from the module that defines it:

- ``load``: any source (MovieLens from the recbole wheel, a GroupLens folder, a
  parquet/CSV log) normalised to one ``RawData`` shape.
- ``ingest``: writes the Feast repository: ``bootstrap_feature_repo`` writes every source
  from scratch, ``ingest`` appends a batch (validated, de-duplicated, features recomputed
  from the batch's first day, online store materialized).
- ``store``: reads it: ``pull_window`` reads ``[t0, t1)`` with the user/item features as
  they were at each event, so training never sees the future.
- ``features``: what the feature tables hold; ``rolling``: their daily rows computed forward
  from a small per-entity state; ``parts``: the tables as one parquet part per day, and the
  state; ``offline_copy``: production's PostgreSQL tables receiving only the new rows.
- ``validation``: pandera checks, bad rows to quarantine.

Feast is imported inside the functions that need it, so importing this package
stays cheap for DAG files.
"""
