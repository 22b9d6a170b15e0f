"""``vouch crl``: print or write a CA's current CRL (made now if none is current)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source


def crl_command(
    ctx: typer.Context,
    ca: Annotated[
        str | None,
        typer.Option("--ca", help="CA name (default: issuance.default_ca).", show_default=False),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write DER here.", show_default=False)
    ] = None,
    pem: Annotated[bool, typer.Option("--pem", help="PEM instead of DER.")] = False,
    shard: Annotated[
        int | None, typer.Option("--shard", help="A partition's CRL.", show_default=False)
    ] = None,
    root_key: Annotated[
        Path | None,
        typer.Option(
            "--root-key",
            help="Offline root directory, to re-sign the root's CRL.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print or write the current CRL of a CA (DER; --pem for PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from vouch.errors import NotFound
    from vouch.fsutil import atomic_write
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    with errors_to_exit():
        vouch = Vouch(state.home, passphrase=passphrase_source(state))
        record = vouch.store.get_authority(ca or vouch.config.issuance.default_ca)
        scope = -1 if shard is None else shard
        if scope not in vouch.crl_producer.scopes(record):
            raise NotFound(f"CA {record.name} has no CRL shard {shard}")
        producer = vouch.crl_producer
        offline = record.role == "root" and root_key is None and record.key_ref == "none:"
        if scope in producer.due(record) and not offline:
            producer.produce(record, vouch.ca_key(record, root_key), vouch.issuer_urls(record))
        latest = vouch.revocations.latest_crl(record.id, scope)
        if latest is None:
            raise NotFound(
                f"CA {record.name} has no CRL yet",
                hint="sign one with --root-key DIR (the offline root directory)",
            )
        data = latest.der
        if pem:
            data = x509.load_der_x509_crl(data).public_bytes(serialization.Encoding.PEM)
        if out is not None:
            atomic_write(out, data)
    if out is None:
        if not pem and sys.stdout.isatty():
            print("refusing to write DER to a terminal; use --pem or --out FILE", file=sys.stderr)
            raise SystemExit(3)
        sys.stdout.buffer.write(data)
    else:
        print(
            f"CRL {latest.number} of {record.name}: {latest.entries} entries, next update "
            f"{latest.next_update:%Y-%m-%d %H:%M} UTC -> {out}",
            file=sys.stderr,
        )
