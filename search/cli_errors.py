"""The error every ``trimtab`` command raises for bad input: one line on stderr, exit 2.

Its own module so that any part's commands can import it without importing the command
group of :mod:`search.cli`, which imports every part's commands.
"""

from __future__ import annotations

from typing import NoReturn

import click


class UserError(click.ClickException):
    """A mistake in what the user gave us: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"trimtab: error: {self.format_message()}", err=True, file=file)


def fail(message: str) -> NoReturn:
    """Abort the command with a one-line error and exit status 2."""
    raise UserError(message)
