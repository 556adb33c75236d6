"""The commands' arguments: argparse types, each command's options, and the arguments as a Setup or RoundConfig.
The commands (cli.py, jobs/) and the Python API (api.py, which reads its keyword options with these parsers)
build on this module; it imports neither."""
from __future__ import annotations

import argparse
import math

from vaal_dist.config import PRESETS, AcquisitionConfig, Backbone, RoundConfig, ScoringConfig, Setup, preset
from vaal_dist.errors import InputError
from vaal_dist.strategies import STRATEGIES

DEFAULT_POOL = "data/mnist-pool"
DEFAULT_LABELED = "data/mnist-labeled.parquet"
DEFAULT_OUT = "results/mnist-round"
DEFAULT_BUDGET = 250          # 5% of the 5,000 digits, the papers' per-round step
DEFAULT_EXPERIMENT_OUT = "results/mnist-experiment"
MAX_SEED = 2**32 - 1


# argparse types: a bad number stops parse_args with a one-line error naming the flag (exit 2), before any
# file is written or Ray started.
def at_least(low: int, at_most: int | None = None):
    """An integer >= ``low`` (and <= ``at_most``)."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (at_most is not None and value > at_most):
            bounds = f"at least {low}" if at_most is None else f"between {low} and {at_most}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    return integer


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def fraction(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction above 0 and below 1, got {value:g}")
    return value


def add_round_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--pool", help="pool folder or URI (Parquet shards); omit for the embedded MNIST pool")
    p.add_argument("--labeled", help="labeled-id manifest (.parquet with an id column, or text)")
    p.add_argument("--budget", type=at_least(1), help="b, the number of images to select")
    p.add_argument("--out", help="output folder or URI (selection, run record, checkpoints)")
    p.add_argument("--strategy", default=RoundConfig.strategy, choices=sorted(STRATEGIES))
    p.add_argument("--holdout", help="manifest of ids never trained on or selected; task models report "
                                     "their accuracy on them")
    p.add_argument("--seed", type=at_least(0, MAX_SEED), default=RoundConfig.seed)
    p.add_argument("--config", metavar="FILE",
                   help="YAML or JSON of these options (batch_size: 32), or a finished round's run.json to replay "
                        "it; flags given override the file")
    add_verbose_arg(p)
    return add_training_args(p)


def add_verbose_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray's own logs: Ray Data's execution plans and resource use, Ray Train's "
                        "worker set-up and reports (by default only warnings, errors and progress show)")
    return p


def add_training_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """How models are trained and the pool scored: shared by rounds and experiments."""
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="the papers' hyperparameters for VAAL, the task model and AALU "
                        "(default: cpu for the embedded pool, else cifar10)")
    p.add_argument("--epochs", type=at_least(1), help="override the preset's VAE/discriminator epochs")
    p.add_argument("--batch-size", type=at_least(1), help="override the preset's VAE/discriminator batch size")
    p.add_argument("--epoch-images", type=at_least(1),
                   help="a VAE/discriminator epoch visits a fresh seeded sample of at most this many unlabeled "
                        "images (default: all of them, as the papers)")
    p.add_argument("--task-epochs", type=at_least(1), help="override the preset's task-model epochs")
    p.add_argument("--task-min-steps", type=at_least(0),
                   help="override the preset's minimum of task-model optimizer steps (more epochs on small labeled sets)")
    p.add_argument("--aalu-epochs", type=at_least(1), help="override the preset's AALU epochs")
    p.add_argument("--mc-passes", type=at_least(1), default=AcquisitionConfig.mc_passes,
                   help="stochastic passes for mc_dropout and dbal")
    p.add_argument("--members", type=at_least(1), default=AcquisitionConfig.ensemble_members,
                   help="ensemble members (trained in parallel over --workers)")
    p.add_argument("--subset-factor", type=at_least(0),
                   help="score a seeded random subset of this many times b unlabeled images (0: the whole "
                        "pool; default: 10 for ta_vaal and learning_loss, the whole pool otherwise)")
    p.add_argument("--max-clusters", type=at_least(1),
                   help="typiclust: at most this many k-means clusters (default: labeled + budget, as the paper; "
                        "the authors' code uses 500), for large labeled sets and budgets")
    p.add_argument("--embedding", metavar="ARCH",
                   help="coreset, cluster_margin, typiclust: embed the pool with this torchvision classifier's "
                        "penultimate features (e.g. resnet50) instead of the strategy's own model; with "
                        "--embedding-weights")
    p.add_argument("--embedding-weights", metavar="FILE",
                   help="the --embedding model's state dict (torch.save; a local path or URI): nothing is downloaded")
    p.add_argument("--embedding-image-size", type=at_least(1), default=Backbone.image_size,
                   help="images are resized to this side for the --embedding model")
    p.add_argument("--embeddings", metavar="FILE",
                   help="coreset, cluster_margin, typiclust: the pool's vectors, a Parquet file or folder (local or "
                        "URI) of id (string) and embedding (a list of float32 or float16 of one width), holding "
                        "every labeled and unlabeled id; no model embeds the pool")
    p.add_argument("--embeddings-cache", metavar="FOLDER",
                   help="where the --embedding backbone's embeddings of the pool (and Cluster-Margin's clusters) "
                        "are kept, computed once: give every round of a pool the same folder (default: in --out)")
    p.add_argument("--workers", type=at_least(0), default=Setup.workers,
                   help="Ray Train workers (DDP); 0 trains in the driver process (Ray Train local mode: no "
                        "worker start-up, for small runs)")
    p.add_argument("--use-gpu", action="store_true", help="train and score on GPUs")
    p.add_argument("--cpus-per-worker", type=positive_float, default=Setup.cpus_per_worker)
    p.add_argument("--max-failures", type=at_least(0), default=Setup.max_failures,
                   help="times a training run restarts its workers from the latest checkpoint after a failure")
    p.add_argument("--placement-timeout", type=at_least(0), default=Setup.placement_timeout, metavar="SECONDS",
                   help="stop when training workers or scoring actors find no room on the cluster for this long "
                        "(default %(default)s; 0: wait forever, for a cluster whose autoscaler adds nodes)")
    p.add_argument("--score-batch-size", type=at_least(1), default=ScoringConfig.batch_size)
    p.add_argument("--score-timeout", type=positive_float, default=ScoringConfig.batch_timeout_s, metavar="SECONDS",
                   help="a scoring batch still running after this many seconds (an image whose decoding hangs) "
                        "fails the round with an error naming the stage, instead of hanging it")
    p.add_argument("--actors", type=at_least(1), help="scoring actors (default: one per GPU, else per CPU)")
    p.add_argument("--threads-per-actor", type=at_least(1), help="torch threads in each scoring actor")
    p.add_argument("--amp", action="store_true", help="score under bfloat16 autocast (with --use-gpu)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    return p


def setup_from_args(args: argparse.Namespace) -> Setup:
    """How the arguments say to train and score; the preset defaults to cpu on the embedded pool."""
    def given(**options):
        return {k: v for k, v in options.items() if v is not None}

    models = preset(_preset_name(args),
                    vaal=given(epochs=args.epochs, batch_size=args.batch_size, epoch_images=args.epoch_images),
                    task=given(epochs=args.task_epochs, min_steps=args.task_min_steps),
                    aalu=given(epochs=args.aalu_epochs))
    if (args.embedding is None) != (args.embedding_weights is None):
        raise InputError("--embedding and --embedding-weights go together: the model and its weights")
    embedding = args.embedding and Backbone(args.embedding, args.embedding_weights, args.embedding_image_size)
    return Setup(
        preset=models,
        acquisition=AcquisitionConfig(mc_passes=args.mc_passes, ensemble_members=args.members,
                                      subset_factor=args.subset_factor, max_clusters=args.max_clusters,
                                      embedding=embedding, embeddings=args.embeddings),
        scoring=ScoringConfig(batch_size=args.score_batch_size, num_actors=args.actors,
                              threads_per_actor=args.threads_per_actor, amp=args.amp,
                              batch_timeout_s=args.score_timeout),
        workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures, placement_timeout=args.placement_timeout)


def _preset_name(args: argparse.Namespace) -> str:
    return args.preset or ("cpu" if args.pool is None else "cifar10")


def embedded_pool(args: argparse.Namespace) -> str:
    """The embedded MNIST pool, built at the preset's image size if missing."""
    from vaal_dist.pool.default import build_default_pool

    build_default_pool(DEFAULT_POOL, DEFAULT_LABELED, size=PRESETS[_preset_name(args)].vaal.image_size)
    return DEFAULT_POOL


def config_from_args(args: argparse.Namespace) -> RoundConfig:
    """The RoundConfig the arguments describe; with no --pool, the embedded MNIST pool (built if missing)."""
    if args.pool is None:
        pool, labeled = embedded_pool(args), args.labeled or DEFAULT_LABELED
        budget = DEFAULT_BUDGET if args.budget is None else args.budget
        out = args.out or DEFAULT_OUT
    else:
        missing = [f"--{n}" for n in ("labeled", "budget", "out") if getattr(args, n) is None]
        if missing:
            raise InputError(f"with --pool, also give {', '.join(missing)}")
        pool, labeled, budget, out = args.pool, args.labeled, args.budget, args.out
    return RoundConfig(pool=pool, labeled=labeled, out=out, budget=budget, strategy=args.strategy,
                       holdout=args.holdout, seed=args.seed, embeddings_cache=args.embeddings_cache,
                       setup=setup_from_args(args))


PREPARE_OPTIONS = ("image_size", "channels", "files_per_shard", "max_pixels", "labels", "cpus_per_shard",
                   "read_threads")


def add_prepare_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options left out keep prepare_pool's defaults."""
    p.add_argument("source", help="folder or URI of .jpg/.jpeg/.png files (class sub-folders become labels)")
    p.add_argument("dest", help="pool folder or URI to write; rerunning the same dest resumes it")
    p.add_argument("--image-size", type=at_least(1), help="side of the square pool images (default 32)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="3 for RGB (default), 1 for grayscale")
    p.add_argument("--files-per-shard", type=at_least(1), help="source files per Parquet shard (default 1000)")
    p.add_argument("--max-pixels", type=at_least(1), help="skip images with more pixels (default PIL's limit)")
    p.add_argument("--labels", choices=("auto", "folders", "none"),
                   help="labels from class sub-folders: auto (default), folders, none")
    p.add_argument("--cpus-per-shard", type=positive_float, help="CPUs each shard task asks of Ray (default 0.5)")
    p.add_argument("--read-threads", type=at_least(1), help="concurrent file reads per shard (default 8)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    return add_verbose_arg(p)


def add_experiment_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from vaal_dist.experiment import ExperimentConfig as E

    p.add_argument("--pool", help="pool with a label column; omit for the embedded MNIST pool")
    p.add_argument("--out", default=DEFAULT_EXPERIMENT_OUT, help="experiment folder; rerunning it resumes")
    p.add_argument("--strategies", nargs="+", default=list(E.strategies), choices=sorted(STRATEGIES),
                   metavar="STRATEGY", help=f"any of {', '.join(sorted(STRATEGIES))}")
    p.add_argument("--seeds", nargs="+", type=at_least(0, MAX_SEED), default=list(E.seeds))
    p.add_argument("--initial", type=fraction, default=E.initial, help="fraction labeled at the start")
    p.add_argument("--step", type=fraction, default=E.step, help="fraction added per round")
    p.add_argument("--final", type=fraction, default=E.final, help="last fraction evaluated")
    p.add_argument("--test-fraction", type=fraction, default=E.test_fraction,
                   help="share of the pool held out to measure accuracy")
    add_verbose_arg(p)
    return add_training_args(p)
