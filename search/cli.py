"""The ``trimtab`` command line: one group, subcommands added by each part of the system.

Bad input prints one line naming the problem to stderr and exits with status 2.
"""

from __future__ import annotations

import logging
import sys

import click

from search.cli_errors import UserError, fail

__all__ = ["UserError", "fail", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """trimtab: find the clipping and precision settings that keep training stable at the
    lowest cost, then ship the winner as a quantized ONNX model behind HTTP."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _register_subcommands() -> None:
    # Each part owns its commands; importing them here keeps `trimtab --help` complete.
    from search import cli_commands  # noqa: F401  (study, train, demo)
    from serving.cli import commands as serving_commands

    for command in serving_commands:
        main.add_command(command)


_register_subcommands()
