r"""Make a raw pool from a folder or bucket of JPEG/PNG files, resumably, on a Ray cluster.

    ray job submit --working-dir . -- python jobs/prepare_pool.py s3://bucket/imagenet/train \
        s3://bucket/pools/imagenet-64 --image-size 64 --files-per-shard 1000

Rerunning with the same dest skips the shards already written. Same code path as `vaal-dist prepare`;
see docs/prepare.md.
"""
import argparse
import sys

from vaal_dist.cli import prepare_command, run_safely
from vaal_dist.cli_args import add_prepare_args


def main(argv=None) -> int:
    args = add_prepare_args(argparse.ArgumentParser(description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    return run_safely(prepare_command, args.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
