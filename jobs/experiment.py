"""Multi-round active-learning experiment with a simulated oracle (the pool's label column).

    python jobs/experiment.py --strategies random vaal entropy --seeds 0 1 2 3 4 --task-epochs 10

With no --pool it runs on the embedded MNIST pool with a local Ray. Same code path as `vaal-dist experiment`.
"""
import argparse
import sys

from vaal_dist.cli import experiment_command, run_safely
from vaal_dist.cli_args import add_experiment_args


def main(argv=None) -> int:
    args = add_experiment_args(argparse.ArgumentParser(description=__doc__)).parse_args(argv)
    return run_safely(experiment_command, args)


if __name__ == "__main__":
    sys.exit(main())
