"""The serving subcommands of ``trimtab`` (collected by ``search.cli``)."""

from __future__ import annotations

import click

from serving.cli_export import export
from serving.cli_monitor import monitor
from serving.cli_serve import serve

commands: list[click.Command] = [export, serve, monitor]
