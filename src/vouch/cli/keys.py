"""``vouch keys``: Key backends: list, health-check, back up and restore CA keys."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
