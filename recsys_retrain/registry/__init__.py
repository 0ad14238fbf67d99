"""MLflow tracking and registry: log a challenger, record the gate's decision, move the aliases.

Three aliases on the registered model carry the pipeline's state: ``challenger``,
``champion`` and ``previous``. MLflow keeps no alias history and has no
compare-and-set, so these modules add both on top of the registry itself.

Modules, lowest first (each imports only those above it):

* ``client``: :func:`~recsys_retrain.registry.client.configure` and
  :func:`~recsys_retrain.registry.client.connect`, an ``MlflowClient`` whose every
  call is retried with backoff on outages, then fails as one ``RegistryError``.
* ``aliases``: alias names, the alias history (``AliasMove``, ``history``), and
  ``move``: aliases moved together under a lock with an intent log (``recover``).
* ``candidates``: ``log_candidate`` (a training run registered as a version and made
  ``challenger``, idempotent per window), ``load_model``, ``try_load``, ``champion``, ``alias``.
* ``promotion``: ``record_decision`` (a :class:`recsys_retrain.gate.GateDecision`
  recorded: tags, artifact, ``gate.*`` metrics such as the MDE), ``apply_decision``
  (recorded and carried out), ``promote`` by hand, ``revert``, ``reverted_on``.
"""
