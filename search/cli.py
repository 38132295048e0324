"""The ``trimtab`` command line: one group; each part lists its commands in a plain list.

Bad input is a ``click.UsageError`` (raised by any part's command, or :func:`fail`): the group
prints it as one line naming the problem, ``trimtab: error: ...``, on stderr and exits with
status 2. Importing this module imports every part's command list; the parts never import it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from search.cli_commands import commands as search_commands
from search.cli_errors import UserError, fail
from serving.cli import commands as serving_commands

__all__ = ["UserError", "fail", "main"]


class _OneLineErrors(click.Group):
    """A group whose subcommands' usage errors are one line: ``trimtab: error: ...``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError:
            raise
        except click.UsageError as error:
            raise UserError(error.format_message()) from None


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level, Ray's logs included.")
def main(verbose: bool) -> None:
    """trimtab: find the clipping and precision settings that keep training stable at the
    lowest cost, then ship the winner as a quantized ONNX model behind HTTP."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


for _command in [*search_commands, *serving_commands]:
    main.add_command(_command)
