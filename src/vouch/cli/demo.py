"""``vouch demo``: a working demo CA in one command (init if needed, issue a sample)."""

from __future__ import annotations

import os
import secrets
from typing import Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source


def demo_command(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Option("--name", help="The sample certificate's DNS name.")
    ] = "demo.localhost",
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Start the server afterwards.")
    ] = True,
) -> None:
    """Set up a demo CA in the home if there is none, issue a sample certificate, and serve it."""
    state: CliState = ctx.obj
    home = state.home
    with errors_to_exit():
        import datetime as dt

        from vouch.config import CONFIG_NAME
        from vouch.fsutil import atomic_write
        from vouch.wiring import Vouch, init_home

        if not (home / CONFIG_NAME).exists():
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            secret_file = home / "demo-passphrase"
            if state.passphrase_file is None and not os.environ.get("VOUCH_PASSPHRASE"):
                # Demo only: the passphrase sits beside the keys. Production homes take it from a
                # secret store or a prompt (docs/operations.md).
                if not secret_file.exists():
                    atomic_write(secret_file, secrets.token_urlsafe(24).encode(), mode=0o600)
                passphrase_file = "demo-passphrase"
            else:
                passphrase_file = None
            print(f"Creating a demo CA in {home} ...")
            init_home(
                home,
                passphrase=passphrase_source(state),
                organization="vouch demo",
                country="US",
                key_type="ec-p256",
                root_validity=dt.timedelta(days=3650),
                intermediate_validity=dt.timedelta(days=1825),
                offline_root=None,
                public_url="http://127.0.0.1:8080",
                passphrase_file=passphrase_file,
            ).close()
        vouch = Vouch(home, passphrase=passphrase_source(state))
        from vouch.services.authority import IssuanceRequest
        from vouch.x509.keytypes import generate_private_key
        from vouch.x509.names import parse_name

        out_dir = home / "demo"
        out_dir.mkdir(exist_ok=True)
        key = generate_private_key("ec-p256")
        issued = vouch.authority().issue(
            IssuanceRequest(key.public_key(), (parse_name(name),), "tls-server")
        )
        from cryptography.hazmat.primitives import serialization

        atomic_write(
            out_dir / f"{name}.key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        atomic_write(out_dir / f"{name}.pem", issued.pem_chain())
        count = vouch.store.count_certificates("issued")
    print(f"Issued a sample certificate for {name}: serial {issued.serial}")
    print(f"  chain: {out_dir / (name + '.pem')}\n  key:   {out_dir / (name + '.key.pem')}")
    print(f"The CA has issued {count} certificates. Try next:")
    print(
        f"  openssl verify -x509_strict -CAfile {home / 'root.pem'} -untrusted {out_dir / (name + '.pem')} {out_dir / (name + '.pem')}"
    )
    print(f"  vouch --home {home} cert new www.example.com --out-dir /tmp")
    print(f"  vouch --home {home} cert list")
    print(f"  vouch --home {home} ca list")
    if not serve:
        return
    http = vouch.config.serve.http
    chain = out_dir / f"{name}.pem"
    print(
        f"  openssl ocsp -issuer <(curl -s http://{http}/ca/issuing.pem) -cert {chain} "
        f"-url http://{http}/ocsp/issuing -CAfile {home / 'root.pem'}"
    )
    print(
        f"  curl http://{http}/healthz     (OCSP: http://{http}/ocsp/issuing, CRL: /crl/issuing.crl)"
    )
    print("Starting the server; Ctrl-C stops it.")
    with errors_to_exit():
        from vouch.server.run import Listen, run

        https = vouch.config.serve.https
        listen_https = Listen.parse(https) if https and https != "off" else None
        run(vouch, http=Listen.parse(http), https=listen_https)
