"""One selection round on a Ray cluster: the next b images to label, and the time per 100 of them.

    ray job submit --working-dir . -- python jobs/imagenet_round.py --pool s3://bucket/pool \
        --labeled s3://bucket/labeled.parquet --budget 64060 --out s3://bucket/round-1 \
        --preset imagenet --workers 8 --use-gpu

With no arguments it runs on the embedded MNIST pool with a local Ray. Same code path as `vaal-dist round`.
It prints a line per training epoch, Ray Data's progress bars and a summary; --verbose adds Ray's own logs.
"""
import argparse
import sys

from vaal_dist.cli import run_round_safely
from vaal_dist.cli_args import add_round_args


def main(argv=None) -> int:
    return run_round_safely(add_round_args(argparse.ArgumentParser(description=__doc__)), argv)


if __name__ == "__main__":
    sys.exit(main())
