"""The adaptive hyperparameter scheduler.

Modules, each imported from where it is defined:

- ``calibrate``: ``calibrate`` picks a run's starting ``SchedulePlan`` from the data's
  profile, its drift and past runs.
- ``start``: ``warm_or_scratch`` decides whether a run continues from the champion
  (``StartDecision``, from ``ChampionInfo``) and with which rate, epochs and data span.
- ``plan``: ``SchedulePlan`` (starting values and thresholds) and its ``Reason`` for each value.
- ``knowledge``: ``KnowledgeBase`` of past runs (``Record``), kept in MLflow.
- ``controller``: ``AdaptiveScheduler`` steers a run by convergence signals (the policy).
- ``rollback``: ``RollbackScheduler``, its base: rates, events, and changes undone when they hurt.
- ``rules``: the pure rules the controller decides by, its ``Limits`` and ``Components``.
- ``convergence``: ``Convergence``, the cues folded from steps and validation cycles.
- ``probe``: the rate probe's race of rate multipliers on the first epoch.
- ``signals``: ``SignalTracker``, the per-step signals (loss EMAs, curvature, noise scale).
- ``snapshot``: in-memory ``Snapshot`` of a model and its optimisers, for rollbacks.
- ``events``: ``ScheduleEvent``, every change with the signal that caused it.
- ``resource``: ``ResourceController`` holds a throughput and memory budget.
- ``trace``: ``Trace`` keeps the curves for the report; ``plot`` draws them.
"""
