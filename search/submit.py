"""Run a study on a running Ray cluster: the script for ``ray submit``.

::

    ray submit cluster.yaml search/submit.py -- studies/digits.yaml --storage /mnt/trimtab/runs

``ray submit`` copies this one file to the head node's home directory and runs
``python ~/submit.py ARGS`` there, so it imports the installed ``search`` package (cluster.yaml
installs the project on every node) and never a path next to itself. It attaches to the
cluster the head is running, then hands ARGS to ``trimtab study run``: the same options, spec
checks, progress lines, report and exit codes. A relative CONFIG or ``--storage`` is relative
to the head's home directory, where cluster.yaml puts ``studies/``.
"""

from __future__ import annotations

import sys

import click

from search.cli_commands import study_run
from search.cli_errors import UserError
from train_loops.ray_runtime import attach_cluster

USAGE_NAME = "ray submit cluster.yaml search/submit.py --"


def attach() -> str:
    """Connect to the cluster this node belongs to (never a Ray of our own); its address."""
    try:
        return attach_cluster()
    except ConnectionError as error:
        raise UserError(f"no Ray cluster to attach to on this node: {error}") from None


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "--help" not in args:
        try:
            click.echo(f"attached to the Ray cluster at {attach()}", err=True)
        except UserError as error:
            error.show()
            sys.exit(error.exit_code)
    study_run.main(args=args, prog_name=USAGE_NAME)


if __name__ == "__main__":
    main()
