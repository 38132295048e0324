"""The serving subcommands of ``trimtab`` (collected by ``search.cli``)."""

from __future__ import annotations

import click

commands: list[click.Command] = []
