"""The torchrun entry point: ``python -m torch.distributed.run --nproc_per_node=N -m recsys_retrain.train.worker``.

Each process torchrun starts runs ``main``: it reads the cycle's parquet files, trains
its share of the batches with ``recsys_retrain.train.loop.train`` and, on rank 0,
writes ``train_result.json`` for the launcher (``recsys_retrain.train.launch``) or the
GPU pod's next task to read. Without torchrun it trains in one process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch.distributed as dist

from recsys_retrain.evaluate import user_metrics
from recsys_retrain.io import write_text
from recsys_retrain.schedule.plan import SchedulePlan
from recsys_retrain.settings import TrainSettings, get_settings
from recsys_retrain.train.loop import train


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``torchrun --nproc_per_node=N -m recsys_retrain.train.worker``.

    Every process reads the same parquet files (the features: encoder, popularity
    snapshots, prior); the node's first rank writes the training examples once into the
    run folder, every rank maps them and reads the rows of its own share of the batches
    (``recsys_retrain.train.example_store``), and rank 0 writes the checkpoint and
    ``train_result.json``.
    """
    parser = argparse.ArgumentParser(prog="python -m recsys_retrain.train.worker", description=main.__doc__)
    parser.add_argument("--history", type=Path, required=True, help="interactions parquet (data-stage columns)")
    parser.add_argument("--catalogue", type=Path, required=True, help="item catalogue parquet")
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt and train_result.json")
    parser.add_argument(
        "--train-settings", type=Path, help="JSON of the train settings section (default: the environment's settings)"
    )
    parser.add_argument("--plan", type=Path, help="plan.json of the calibrate step: train under the adaptive scheduler")
    parser.add_argument("--validation", type=Path, help="validation parquet that steers the scheduler (with --plan)")
    parser.add_argument(
        "--init", type=Path,
        help="a Recommender saved with torch.save (the champion a warm-start plan continues from): train(init=...)",
    )
    parser.add_argument("--blend-holdout", type=Path,
                        help="parquet of the interactions after the history that fit the served blend with recent popularity")
    parser.add_argument("--train-from", help="ISO time: train on the interactions from then on; earlier ones feed the features")
    args = parser.parse_args(argv)
    plan, validate = None, None
    tail = pd.read_parquet(args.blend_holdout) if args.blend_holdout else None
    if args.plan:
        payload = json.loads(args.plan.read_text())
        plan = SchedulePlan.from_dict(payload["plan"]) if payload.get("plan") else None
    if args.validation:
        history_for_eval, later = pd.read_parquet(args.history), pd.read_parquet(args.validation)
        k = plan.validation_k if plan is not None else get_settings().eval.k
        validate = lambda model: user_metrics(model, history_for_eval, later, k).ndcg  # noqa: E731
    if args.train_settings:
        train_settings = TrainSettings.model_validate_json(args.train_settings.read_text())
    else:
        train_settings = get_settings().train
    init = None
    if args.init:
        import torch

        # A whole Recommender (as the registry pickles it), written by the launching train step into its cycle folder.
        init = torch.load(args.init, map_location="cpu", weights_only=False)  # nosec B614
    result = train(
        pd.read_parquet(args.history), pd.read_parquet(args.catalogue), args.out, train_settings, progress=False,
        validate=validate, plan=plan, init=init, blend_holdout=tail,
        train_from=pd.Timestamp(args.train_from) if args.train_from else None,
    )
    if dist.get_rank() == 0:
        write_text(json.dumps(result.to_dict(), indent=2), args.out / "train_result.json")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
