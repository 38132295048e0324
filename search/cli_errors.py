"""The error ``trimtab`` prints for bad input: one line on stderr, exit status 2.

:class:`UserError` is a ``click.UsageError``, so any part's command may raise click's own
``UsageError`` instead (``serving`` does: it never imports ``search``); the ``trimtab`` group
(:mod:`search.cli`) shows either as ``trimtab: error: ...``.
"""

from __future__ import annotations

from typing import NoReturn

import click


class UserError(click.UsageError):
    """A mistake in what the user gave us: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"trimtab: error: {self.format_message()}", err=True, file=file)


def fail(message: str) -> NoReturn:
    """Abort the command with a one-line error and exit status 2."""
    raise UserError(message)
