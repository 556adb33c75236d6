"""``vaal-dist`` and the jobs/ scripts: parse arguments (cli_args.py, labeling/cli.py), call the Python API
(api.py), print what it did."""
from __future__ import annotations

import argparse
import logging
import sys

from vaal_dist.cli_args import add_experiment_args, add_prepare_args, add_round_args
from vaal_dist.config_file import parse_with_config
from vaal_dist.errors import VaalDistError
from vaal_dist.labeling.cli import add_export_args, add_import_args
from vaal_dist.ray_session import shut_down_after
from vaal_dist.redaction import redact


def round_command(args: argparse.Namespace) -> int:
    from vaal_dist import api

    with shut_down_after():
        result = api.run_round(args)
    t = result.record["timings"]
    print(f"selection: {redact(result.selection)}")
    print(f"report: {redact(result.report)}")
    print(f"per-100-sample query time: {result.per_100_seconds:.2f} s "
          f"(b={result.record['budget']}: train {t['train_seconds']:.1f} s, score {t['score_seconds']:.1f} s, "
          f"merge {t['merge_seconds']:.2f} s, total {t['total_seconds']:.1f} s)")
    return 0


def prepare_command(args: argparse.Namespace) -> int:
    from vaal_dist import api

    with shut_down_after():
        s = api.run_prepare(args)
    reasons = ", ".join(f"{n} {reason}" for reason, n in s["skipped_by_reason"].items()) or "none"
    print(f"pool: {s['dest']}")
    print(f"prepared {s['prepared']} of {s['files_seen']} files in {s['shards']} shards "
          f"({s['shards_reused']} already written); skipped {s['skipped']} ({reasons})")
    print(f"this run: {s['prepared_this_run']} images in {s['seconds']:.1f} s "
          f"({s['images_per_second']:.1f} images/s); summary in prepare.json, skipped files in errors-*.pq")
    return 0


def experiment_command(args: argparse.Namespace) -> int:
    from vaal_dist import api
    from vaal_dist.experiment_report import summarize

    with shut_down_after():
        curves = api.run_experiment(args)
    print(f"results: {redact(args.out)}/curves.csv, summary.csv, report.md, curves.png")
    for row in summarize(curves):
        print(f"{row['strategy']:>20}: AULC {row['aulc_mean']:.4f} +- {row['aulc_std']:.4f} over {row['seeds']} "
              f"seeds; minus random {row['minus_random_mean']:+.4f} +- {row['minus_random_std']:.4f}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from vaal_dist import api

    exported = api.run_export(args)
    if args.url is not None:
        print(f"Label Studio project {exported.project} at {redact(exported.url)}: {exported.imported} tasks "
              f"imported, {exported.present} there before")
        return 0
    for f in exported:
        print(f"wrote {redact(f)}")
    return 0


def import_command(args: argparse.Namespace) -> int:
    from vaal_dist import api

    imported = api.run_import(args)
    print(f"labeled manifest: {redact(imported.manifest)} ({imported.labeled} images, {imported.new} new)")
    unannotated = f"; {imported.unannotated} exported images have no annotation yet" if imported.unannotated else ""
    print(f"labels: {redact(imported.labels)}{unannotated}")
    return 0


def run_safely(command, args) -> int:
    """Run a command; errors about the user's input print one line and exit 2, not a stack trace. vaal_dist's
    own INFO logs show; other libraries' only with --verbose."""
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("vaal_dist").setLevel(logging.INFO)
    try:
        return command(args)
    except VaalDistError as e:
        return _refused(e)
    except OSError as e:        # the storage refusing for good (no such bucket, access denied): its words, one line
        return _refused(redact(str(e)))


def run_round_safely(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """``round_command`` on ``argv`` as ``parser`` reads it, with its ``--config FILE`` read first."""
    try:
        args = parse_with_config(parser, sys.argv[1:] if argv is None else argv)
    except VaalDistError as e:
        return _refused(e)
    return run_safely(round_command, args)


def _refused(e: VaalDistError | str) -> int:
    print(f"vaal-dist: error: {e}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vaal-dist", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    round_parser = add_round_args(sub.add_parser("round", help="select the next b images to label (one round)"))
    add_prepare_args(sub.add_parser("prepare", help="make a raw pool from a folder or bucket of JPEG/PNG files"))
    add_experiment_args(sub.add_parser("experiment", help="multi-round learning curves with a simulated oracle"))
    add_export_args(sub.add_parser("export", help="write a round's selection as labeling tasks "
                                                  "(Label Studio, COCO, CSV)"))
    add_import_args(sub.add_parser("import-labels", help="read a labeling tool's answers into the next "
                                                         "round's labeled manifest and labels.parquet"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.command == "round":
        return run_round_safely(round_parser, argv[1:])
    commands = {"round": round_command, "prepare": prepare_command, "experiment": experiment_command,
                "export": export_command, "import-labels": import_command}
    return run_safely(commands[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
