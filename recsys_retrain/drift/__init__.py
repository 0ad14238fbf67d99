"""Drift between a reference window and a current window of interactions.

Signals a recommender team can act on (who rates, what they rate, how they rate,
when), each tested with a threshold calibrated for the pair of windows at hand by
permuting users between them. The full account (signals, calibration, severity,
Evidently's files) is in docs/drift.md.

``check``: ``check_drift``, the function a cycle calls, and ``champion_scorer``
(prediction drift). ``signals``: the signals (``SIGNALS``), when each can be tested,
and their statistic (``distance``). ``observations``: both windows as per-unit count
matrices, one ``Observed`` per signal. ``calibration``: thresholds from user
permutations, set jointly at family-wise ``alpha``. ``verdict``: ``SignalResult``,
``DriftReport`` and the severity with its reason. ``evidently_files``: ``drift.json``
and Evidently's ``drift.html``.

Imports go to the module that defines a name, e.g.
``from recsys_retrain.drift.check import check_drift``.
"""
