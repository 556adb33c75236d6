"""Running a training loop on Ray Train: DDP workers, dataset shards, checkpoints that a rerun resumes."""
from __future__ import annotations

from collections.abc import Callable

import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from vaal_dist.errors import InputError, VaalDistError
from vaal_dist.pool.io import resolve


class TrainingError(VaalDistError, RuntimeError):
    """Training failed on the cluster; the message carries the worker's error."""


def fit(train_loop: Callable[[dict], None], loop_config: dict, datasets: dict[str, ray.data.Dataset], *,
        storage_path: str, name: str, workers: int, use_gpu: bool, cpus_per_worker: float,
        max_failures: int = 0, split: list[str] | None = None) -> ray.train.Result:
    """Run ``train_loop`` on ``workers`` DDP workers; the result holds the latest checkpoint and metrics.

    Checkpoints land in ``storage_path/name``; calling again with the same two resumes from the latest
    one (Ray Train V2 resumes by run name), and the loop finds it with ``ray.train.get_checkpoint()``.
    ``split`` names the datasets sharded across workers (default: all); the others reach every worker whole.
    """
    fs, path = resolve(storage_path)
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True              # same seed, same batches: needed for reproducible runs
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split="all" if split is None else split,
                                            execution_options=ingest),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps the worker's exception and loses its type, not its text
        input_error = _input_error_in(e)
        if input_error:          # bad input met while training (e.g. an undecodable image)
            raise InputError(input_error) from e
        raise TrainingError(f"training {name!r} failed: {e}") from e
    if result.checkpoint is None:
        raise TrainingError(f"training {name!r} finished without a checkpoint")
    return result


def _input_error_in(e: Exception) -> str | None:
    """The message of an InputError raised on a worker, from the full (untruncated) worker errors."""
    marker = f"{InputError.__module__}.{InputError.__name__}: "
    for text in [str(e), *map(str, getattr(e, "worker_failures", {}).values())]:
        if marker in text:
            return text.split(marker, 1)[1].splitlines()[0]
    return None
