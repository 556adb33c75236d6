"""The Python API: what the ``vaal-dist`` commands do, as functions. Their options are the commands' long
options with underscores (``epochs=2``, ``batch_size=32``), checked by the same parser, so a bad one raises
the InputError whose message the command prints. Ray is started (or $RAY_ADDRESS joined) on the first call
that needs it and kept for the next; docs/api.md walks through a round trip."""
from __future__ import annotations

import argparse
import datetime
import logging
import os
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from vaal_dist import cli_args, ray_session
from vaal_dist.config_file import check_replay, option_argv, parse_with_config
from vaal_dist.errors import InputError
from vaal_dist.labeling.cli import add_export_args, add_import_args
from vaal_dist.pool.storage import exists, resolve

log = logging.getLogger(__name__)

RESULTS = "results"           # select(out=None) writes a new folder under ./results/


class _Parser(argparse.ArgumentParser):
    """The commands' parser raising the InputError whose message the command prints, instead of exiting."""

    def error(self, message: str):
        raise InputError(message)


def _parse(add_args, positionals: list[str], options: dict) -> argparse.Namespace:
    parser = add_args(_Parser())
    # "--": a positional that starts with "-" is a value, not a flag
    return parse_with_config(parser, [*option_argv(options, parser), *(["--", *positionals] if positionals else [])])


def select(pool: str, labeled: str, budget: int, *, strategy: str | None = None, out: str | None = None,
           preset: str | None = None, **options) -> pa.Table:
    """One selection round (``vaal-dist round``): the ``budget`` images of ``pool`` to label next, as a table of
    ``id``, ``score`` and ``rank`` in rank order. ``strategy``: a config file's, else ``vaal``. ``out`` keeps the
    round (None: a config file's, else a new folder under ./results/, logged); a finished ``out`` is read back, an
    interrupted one resumed. ``options``: the round's other options, e.g. ``epochs=2``, ``workers=0``,
    ``config="round.yaml"``."""
    args = _parse(cli_args.add_round_args, [], dict(pool=pool, labeled=labeled, budget=budget, strategy=strategy,
                                               out=out, preset=preset, **options))
    args.out = args.out or _new_out(args.strategy)      # after the parse: a checked strategy names the folder
    result = run_round(args)
    fs, path = resolve(result.selection)
    return pq.read_table(path, filesystem=fs)


def _new_out(strategy: str) -> str:
    while True:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
        out = os.path.join(RESULTS, f"{strategy}-{stamp}")
        if not exists(out):
            log.info("select: the round goes to %s", out)
            return out


def run_round(args: argparse.Namespace):
    """The round ``args`` (the round's parsed options) describe; returns its RoundResult."""
    from vaal_dist.round import run_round as run

    config = cli_args.config_from_args(args)
    check_replay(getattr(args, "replayed", None), config.to_dict())
    ray_session.connect(args.ray_address, args.verbose)
    return run(config)


def prepare(source: str, dest: str, **options) -> dict:
    """A raw pool at ``dest`` from the JPEG/PNG files under ``source`` (``vaal-dist prepare``); returns the
    summary prepare.json holds. Rerunning the same ``dest`` resumes it."""
    return run_prepare(_parse(cli_args.add_prepare_args, [source, dest], options))


def run_prepare(args: argparse.Namespace) -> dict:
    from vaal_dist.pool.prepare import prepare_pool

    options = {name: getattr(args, name) for name in cli_args.PREPARE_OPTIONS if getattr(args, name) is not None}
    ray_session.connect(args.ray_address, args.verbose)
    return prepare_pool(args.source, args.dest, **options)


def export(round_out: str, to: str, dest: str | None = None, **options):
    """The selection of the finished round in ``round_out`` as labeling tasks in format ``to`` under ``dest``
    (``vaal-dist export``); returns the files written. With ``url`` (and ``project`` or ``title``), imported into
    that Label Studio instead; returns the Pushed project and counts. No Ray."""
    return run_export(_parse(add_export_args, [round_out], dict(to=to, dest=dest, **options)))


def run_export(args: argparse.Namespace):
    from vaal_dist.labeling.export import export_selection
    from vaal_dist.labeling.label_studio import push
    from vaal_dist.labeling.sources import BUCKET_SCHEMES

    if args.url is not None:
        if args.to != "label-studio" or (args.dest is not None and urlsplit(args.dest).scheme not in BUCKET_SCHEMES):
            raise InputError("--url imports into Label Studio: give it with --to label-studio, and --dest only as "
                             "the s3:// or gs:// folder of the images (by default the tasks carry them)")
        return push(args.round, args.url, project=args.project, title=args.title, dest=args.dest or "",
                    classes=args.classes, pool=args.pool, max_tasks=args.max_tasks, max_bytes=args.max_bytes,
                    expires_s=args.expires, links=args.link, source=args.source)
    if args.dest is None or args.project is not None or args.title is not None:
        raise InputError("give --dest, the folder of the task files (--project and --title go with --url)")
    return export_selection(args.round, args.to, args.dest, classes=args.classes, pool=args.pool,
                            max_tasks=args.max_tasks, max_bytes=args.max_bytes, expires_s=args.expires,
                            links=args.link, source=args.source)


def import_labels(exports: str | list[str] | None, round_out: str, **options):
    """A labeling tool's answers to the round in ``round_out`` as the next round's labeled manifest and labels.parquet
    (``vaal-dist import-labels``); returns what was written (``manifest``, ``labels``, counts). ``exports`` None
    with ``label_studio`` (a URL) and ``project``: that project's annotations, read through the API. No Ray."""
    exports = [exports] if isinstance(exports, str) else list(exports or [])
    return run_import(_parse(add_import_args, exports, dict(round=round_out, **options)))


def run_import(args: argparse.Namespace):
    from vaal_dist.labeling.import_labels import answers_in, import_labels
    from vaal_dist.labeling.label_studio import project_export

    options = dict(classes=args.classes, pool=args.pool, labeled=args.labeled, dest=args.out)
    if args.label_studio is None:
        if not args.export or args.project is not None:
            raise InputError("give the tool's export files, or --label-studio URL and --project ID")
        return import_labels(args.export, args.round, **options)
    if args.export or args.project is None:
        raise InputError("--label-studio reads the project's annotations from the server: give --project ID and no "
                         "export files")
    project = f"Label Studio project {args.project} at {args.label_studio}"
    return import_labels([project], args.round, **options,
                        read=lambda _: answers_in(project, project_export(args.label_studio, args.project)))


def experiment(pool: str | None = None, **options) -> pa.Table:
    """Learning curves of strategies x seeds with a simulated oracle (``vaal-dist experiment``); returns the
    curve table. ``pool`` None: the embedded MNIST pool."""
    return run_experiment(_parse(cli_args.add_experiment_args, [], dict(pool=pool, **options)))


def run_experiment(args: argparse.Namespace) -> pa.Table:
    from vaal_dist.experiment import ExperimentConfig, run_experiment as run

    pool = cli_args.embedded_pool(args) if args.pool is None else args.pool
    config = ExperimentConfig(pool=pool, setup=cli_args.setup_from_args(args), out=args.out,
                              strategies=tuple(args.strategies), seeds=tuple(args.seeds), initial=args.initial,
                              step=args.step, final=args.final, test_fraction=args.test_fraction)
    ray_session.connect(args.ray_address, args.verbose)
    return run(config)

