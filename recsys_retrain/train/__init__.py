"""Training of the two-tower model under TorchRec's DistributedModelParallel.

Modules:
    loop: ``train()``, one run from interaction frames to ``model.pt`` and ``trace.json``
        (``TrainResult``), and ``TrainLoop``, the epochs and steps with their counters.
    distributed: the process group and device, the sharded model (planner constraints,
        DMP), the fused embedding optimizer and the dense Adam, and the rank helpers.
    examples: training examples from interactions, their per-period batches, recency
        weighting and catalogue snapshots (item features and item prior per week).
    hooks: the per-step and per-epoch signals and the ``Callback`` hook points.
    checkpoints: the per-rank epoch checkpoint a killed run resumes from, and the
        one-dict ``model.pt`` (``load_checkpoint``).
    warm_start: a model for a grown encoder that starts from the champion's weights, its
        rows carried over by raw id (``warm_start``, ``union_encoder``).
    blend: the served score's blend with recent popularity, fit on a validation tail
        (``blend_ndcg``, ``best_blend``).
    worker: ``main(argv)``, what each ``torchrun`` process runs
        (``python -m recsys_retrain.train.worker``).
    launch: starts ``torchrun`` for multi-process training from the train task and
        turns a failed run into one line.
"""
