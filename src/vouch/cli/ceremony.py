"""``vouch ceremony``: Offline root ceremonies: create a root, sign an intermediate CSR, sign the root CRL, roll over, import transcripts."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)
