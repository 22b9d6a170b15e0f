"""``vouch init``: a new home with a root CA, an issuing intermediate and encrypted keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source


def init_command(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Option("--name", help="Organization name in the CA certificates.")
    ] = "Example Corp",
    country: Annotated[
        str, typer.Option("--country", help="Two-letter country code of the organization.")
    ] = "US",
    key_type: Annotated[
        str, typer.Option("--key-type", help="ec-p256, ec-p384, rsa-3072, rsa-4096 or ed25519.")
    ] = "ec-p256",
    root_validity: Annotated[str, typer.Option("--root-validity")] = "20y",
    intermediate_validity: Annotated[str, typer.Option("--intermediate-validity")] = "5y",
    offline_root: Annotated[
        Path | None,
        typer.Option(
            "--offline-root",
            help="Write the root key here and keep none in the home.",
            show_default=False,
        ),
    ] = None,
    public_url: Annotated[
        str,
        typer.Option(
            "--public-url", help="Base URL written into certificates for AIA, CRL and OCSP."
        ),
    ] = "http://127.0.0.1:8080",
    permit_dns: Annotated[
        list[str] | None,
        typer.Option(
            "--permit-dns",
            help="Name-constrain the issuing CA to this DNS suffix (repeatable).",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing home (destroys its keys).")
    ] = False,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            "--passphrase-file", help="File holding the key passphrase.", show_default=False
        ),
    ] = None,
    key_backend: Annotated[
        str,
        typer.Option(
            "--key-backend",
            help="Where the CA keys are made: file (encrypted files in the home) or "
            "pkcs11:token=LABEL (keys 'root' and 'issuing' made in the token).",
        ),
    ] = "file",
    pkcs11_module: Annotated[
        str | None,
        typer.Option(
            "--pkcs11-module",
            help="PKCS#11 module (default: SoftHSM2's); written to keys.pkcs11_module.",
            show_default=False,
        ),
    ] = None,
    pkcs11_pin_file: Annotated[
        str | None,
        typer.Option(
            "--pkcs11-pin-file",
            help="File (mode 0600) with the token's user PIN; else VOUCH_PKCS11_PIN.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a root CA, an issuing intermediate, vouch.toml and a database."""
    state: CliState = ctx.obj
    if passphrase_file is not None:
        state.passphrase_file = passphrase_file
    with errors_to_exit():
        from vouch.durations import parse_duration
        from vouch.wiring import init_home
        from vouch.x509.build import NameConstraintsSpec
        from vouch.x509.keytypes import parse_key_type
        from vouch.x509.names import normalize_dns

        constraints = None
        if permit_dns:
            constraints = NameConstraintsSpec(
                permitted_dns=tuple(normalize_dns(d) for d in permit_dns)
            )
        vouch = init_home(
            state.home,
            passphrase=passphrase_source(state, confirm_new=True),
            organization=name,
            country=country,
            key_type=parse_key_type(key_type),
            root_validity=parse_duration(root_validity),
            intermediate_validity=parse_duration(intermediate_validity),
            offline_root=offline_root,
            public_url=public_url,
            force=force,
            name_constraints=constraints,
            key_backend=key_backend,
            pkcs11_module=pkcs11_module,
            pkcs11_pin_file=pkcs11_pin_file,
        )
        roots = vouch.store.list_authorities()
        vouch.close()
    print(f"Created a vouch home at {state.home}")
    for record in roots:
        print(
            f"  {record.role:<12} {record.name:<10} serial {record.serial}  "
            f"until {record.not_after:%Y-%m-%d}  key {record.key_ref}"
        )
    if offline_root is not None:
        print(f"The root key is in {offline_root}; no root key is in the home. Keep it offline.")
    print(f"Trust anchor: {state.home / 'root.pem'}")
    print("Next: vouch cert new www.example.com")
