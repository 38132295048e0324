"""The serving subcommands of ``trimtab`` (collected by ``search.cli``)."""

from __future__ import annotations

import click

from serving.cli_export import export

commands: list[click.Command] = [export]
