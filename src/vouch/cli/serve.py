"""``vouch serve`` and ``vouch publish``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source


def serve_command(
    ctx: typer.Context,
    http: Annotated[
        str | None,
        typer.Option(
            "--http", help="HOST:PORT for plain HTTP (default: serve.http).", show_default=False
        ),
    ] = None,
    https: Annotated[
        str | None,
        typer.Option(
            "--https",
            help="HOST:PORT for HTTPS (default: serve.https; 'off' for none).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve CRLs, OCSP, CA certificates, health and metrics; keep revocation data fresh."""
    from vouch.server.run import Listen, run
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    with errors_to_exit():
        vouch = Vouch(state.home, passphrase=passphrase_source(state), lint_pool=True)
        serve_settings = vouch.config.serve
        http_listen = Listen.parse(http or serve_settings.http)
        https_text = https if https is not None else serve_settings.https
        https_listen = None if https_text in (None, "", "off") else Listen.parse(https_text)
        # Open the online CA keys now: a wrong passphrase is a clear error before listening,
        # not a server that answers but can sign nothing.
        for record in vouch.store.list_authorities():
            if record.role != "root" and record.status == "active" and record.key_ref != "none:":
                vouch.ca_key(record)
        # Lint workers (issuance.lint_workers), if any, load pkilint while the server starts.
        vouch.linter  # noqa: B018
        try:
            run(vouch, http=http_listen, https=https_listen)
        finally:
            vouch.close()  # stops the lint workers, if any


def publish_command(
    ctx: typer.Context,
    to: Annotated[Path, typer.Option("--to", help="Directory to write the static files into.")],
) -> None:
    """Write CA certificates, CRLs and pre-signed OCSP responses as static files."""
    from vouch.fsutil import atomic_write
    from vouch.services.publishing import published_files
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    counts: dict[str, int] = {}
    with errors_to_exit():
        vouch = Vouch(state.home, passphrase=passphrase_source(state))
        to.mkdir(parents=True, exist_ok=True)
        for published in published_files(
            store=vouch.store,
            revocations=vouch.revocations,
            ocsp_store=vouch.ocsp_store,
            clock=vouch.clock,
        ):
            target = to / published.path
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, published.data)
            counts[published.kind] = counts.get(published.kind, 0) + 1
    print(
        f"Published to {to}{os.sep}: {counts.get('ca', 0)} CA certificates, "
        f"{counts.get('crl', 0)} CRLs, {counts.get('ocsp', 0)} OCSP responses"
    )
