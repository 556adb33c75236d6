"""The options of ``vaal-dist export`` and ``vaal-dist import-labels`` (a round's selection out to a labeling tool,
its answers back as the next round's labeled manifest), which cli.py runs and api.py reads keyword options with."""
from __future__ import annotations

import argparse

from vaal_dist.cli_args import at_least


def add_export_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from vaal_dist.labeling.export import LINKS, MAX_BYTES, MAX_TASKS, WEEK_S
    from vaal_dist.labeling.formats import LABEL_FORMATS

    p.add_argument("round", help="a finished round's --out folder or URI")
    p.add_argument("--to", required=True, choices=tuple(LABEL_FORMATS), help="the labeling tool's format")
    p.add_argument("--dest",
                   help="folder or URI for the task files; a local one embeds the images as data: URLs, an s3:// "
                        "or gs:// one gets the images beside the tasks, linked by signed URLs; with --url, the s3:// "
                        "or gs:// folder of the images only (default: data: URLs)")
    p.add_argument("--url", help="with --to label-studio: import the tasks into the Label Studio at this URL through "
                                 "its API (token: $LABEL_STUDIO_API_KEY) instead of writing files; safe to rerun")
    p.add_argument("--project", type=at_least(1), metavar="ID",
                   help="with --url: the project to import into (its labeling config must fit the round's)")
    p.add_argument("--title", help="with --url: the project titled so, created when there is none (default: "
                                   "'vaal_dist ' and the round folder's name)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="class names in label order (default: the pool's classes.json)")
    p.add_argument("--pool", help="the round's pool, when its run record hides the URI's credentials")
    p.add_argument("--link", choices=LINKS, default="url",
                   help="a pool made by prepare links each image's original file: 'url' (default) as above, from "
                        "an s3:// or gs:// source by a signed URL of the source object itself; 'source': its plain "
                        "s3:// or gs:// URI, for Label Studio's own cloud storage to sign")
    p.add_argument("--source", help="the pool's source folder, when its pool.json hides the URI's credentials")
    p.add_argument("--max-tasks", type=at_least(1), default=MAX_TASKS,
                   help=f"tasks per file; more are split into several files (default {MAX_TASKS:,}, Label "
                        f"Studio's recommended project size)")
    p.add_argument("--max-bytes", type=at_least(1), default=MAX_BYTES,
                   help=f"bytes per file, cut between tasks (default {MAX_BYTES:,}: under Label Studio's 200 MB "
                        f"import limit)")
    p.add_argument("--expires", type=at_least(1, WEEK_S), default=WEEK_S, help="seconds a signed image URL stays valid "
                                                                    "(default and most: 7 days)")
    return p


def add_import_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("export", nargs="*", help="the tool's exports of the round, all of them in one call: Label Studio "
                                             "JSON, COCO JSON, or CSVs of id,label")
    p.add_argument("--label-studio", metavar="URL", help="instead of export files: read the annotations of --project "
                                                         "from the Label Studio at URL (token: $LABEL_STUDIO_API_KEY)")
    p.add_argument("--project", type=at_least(1), metavar="ID", help="with --label-studio: the project's id")
    p.add_argument("--round", required=True, help="the round whose selection was labeled (its --out)")
    p.add_argument("--classes", nargs="+", metavar="NAME",
                   help="class names in label order, as given to export (default: the pool's classes.json)")
    p.add_argument("--out", help="the next round's labeled manifest (default ROUND/labeled.parquet), which must "
                                 "not exist yet; labels.parquet is written beside it")
    p.add_argument("--pool", help="the round's pool, when its run record hides the URI's credentials")
    p.add_argument("--labeled", help="the round's labeled manifest, when its run record hides the URI's "
                                     "credentials")
    return p
