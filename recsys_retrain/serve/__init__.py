"""Serving the champion: in-process, over REST (an MLflow pyfunc) and precomputed in the online store.

Modules:
    ranker: ``Ranker``, a registered model's top-K for users described by their profile and
        history, the item side computed once; unknown users get recent popularity.
    online: the users' features from Feast's online store through the feature service
        ``two_tower_online_v1`` (``OnlineReader``), and their point-in-time twin offline.
    pyfunc: ``TopK``, the MLflow python model every candidate is logged as (signature, input
        example, requirements, code), and ``read_recommender_file`` for the pipeline's own loads.
    publish: ``publish_champion``, the champion's top-K of recently active users written to the
        ``recommendations`` feature view after a promotion or a revert.
    recommend: ``retrain recommend``'s table.
"""
