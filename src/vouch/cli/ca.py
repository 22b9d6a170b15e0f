"""``vouch ca``: list, show and create certificate authorities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source

app = typer.Typer(no_args_is_help=True)


def _open(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    return Vouch(state.home, passphrase=passphrase_source(state))


@app.command("list")
def list_command(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """The CAs of this home."""
    from vouch.cli.render import authority_json, print_json, print_table

    with errors_to_exit():
        vouch = _open(ctx)
        records = vouch.store.list_authorities()
    names = {r.id: r.name for r in records}
    rows = [authority_json(r, names.get(r.parent_id) if r.parent_id else None) for r in records]
    if as_json:
        print_json(rows)
        return
    print_table(
        "Certificate authorities",
        ["name", "role", "status", "serial", "not after", "key"],
        [
            [r["name"], r["role"], r["status"], r["serial"], r["not_after"], r["key_backend"]]
            for r in rows
        ],
    )


@app.command("show")
def show_command(
    ctx: typer.Context,
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    pem: Annotated[bool, typer.Option("--pem", help="Print the CA certificate as PEM.")] = False,
) -> None:
    """One CA; --pem prints its certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from vouch.cli.render import authority_json, print_fields, print_json

    with errors_to_exit():
        vouch = _open(ctx)
        record = vouch.store.get_authority(name)
        parent = vouch.store.authority_by_id(record.parent_id).name if record.parent_id else None
    certificate = x509.load_der_x509_certificate(record.certificate)
    if pem:
        typer.echo(certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"), nl=False)
        return
    data = authority_json(record, parent)
    data["subject"] = certificate.subject.rfc4514_string()
    if as_json:
        print_json(data)
    else:
        print_fields(f"CA {name}", data)


@app.command("new-intermediate")
def new_intermediate_command(
    ctx: typer.Context,
    name: str,
    key_type: Annotated[str, typer.Option("--key-type")] = "ec-p256",
    validity: Annotated[str, typer.Option("--validity")] = "5y",
    root_key: Annotated[
        Path | None,
        typer.Option(
            "--root-key", help="Offline root directory holding root.key.pem.", show_default=False
        ),
    ] = None,
    standby: Annotated[
        bool, typer.Option("--standby", help="Create it as a standby (not issuing yet).")
    ] = False,
    permit_dns: Annotated[
        list[str] | None, typer.Option("--permit-dns", show_default=False)
    ] = None,
    exclude_dns: Annotated[
        list[str] | None, typer.Option("--exclude-dns", show_default=False)
    ] = None,
) -> None:
    """A further issuing CA under the same root (another team, or a standby)."""
    from vouch.durations import parse_duration
    from vouch.x509.build import NameConstraintsSpec
    from vouch.x509.keytypes import parse_key_type
    from vouch.x509.names import normalize_dns

    with errors_to_exit():
        vouch = _open(ctx)
        constraints = None
        if permit_dns or exclude_dns:
            constraints = NameConstraintsSpec(
                permitted_dns=tuple(normalize_dns(d) for d in permit_dns or ()),
                excluded_dns=tuple(normalize_dns(d) for d in exclude_dns or ()),
            )
        created = vouch.create_intermediate(
            name,
            key_type=parse_key_type(key_type),
            validity=parse_duration(validity),
            root_key_dir=root_key,
            status="standby" if standby else "active",
            name_constraints=constraints,
        )
    print(
        f"Created intermediate {created.record.name} (serial {created.record.serial}, "
        f"{created.record.status}, until {created.record.not_after:%Y-%m-%d})"
    )


@app.command("sign-csr")
def sign_csr_command(
    ctx: typer.Context,
    csr: Path,
    root_key: Annotated[Path, typer.Option("--root-key", help="Directory holding root.key.pem.")],
    name: Annotated[
        str | None, typer.Option("--name", help="Name to record the CA under.", show_default=False)
    ] = None,
    validity: Annotated[str, typer.Option("--validity")] = "5y",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the certificate here.", show_default=False)
    ] = None,
) -> None:
    """Sign an intermediate CA's CSR made elsewhere with the (offline) root key."""
    from cryptography.hazmat.primitives import serialization

    from vouch.durations import parse_duration
    from vouch.fsutil import read_limited
    from vouch.x509.csr import MAX_CSR_BYTES

    with errors_to_exit():
        data = read_limited(csr, MAX_CSR_BYTES, "CSR file")
        vouch = _open(ctx)
        root = vouch.root()
        created = vouch.ca_admin().sign_intermediate_csr(
            name=name or csr.stem.lower().replace("_", "-").replace(".", "-"),
            csr_data=data,
            parent=root,
            parent_key=vouch.root_key(root_key),
            validity=parse_duration(validity),
        )
        pem = created.certificate.public_bytes(serialization.Encoding.PEM)
        if out is not None:
            from vouch.fsutil import atomic_write

            atomic_write(out, pem)
    if out is None:
        typer.echo(pem.decode("ascii"), nl=False)
    else:
        print(
            f"Signed intermediate {created.record.name} (serial {created.record.serial}) -> {out}"
        )


@app.command("revoke")
def revoke_command(
    ctx: typer.Context,
    name: str,
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="keyCompromise, cACompromise, superseded, cessationOfOperation or unspecified.",
        ),
    ],
    root_key: Annotated[
        Path | None,
        typer.Option(
            "--root-key",
            help="Offline root directory holding root.key.pem (to sign the root's CRL).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Revoke an intermediate CA: on the root's CRL, and it issues nothing more."""
    with errors_to_exit():
        vouch = _open(ctx)
        root = vouch.root()
        # The root key is needed for the root's CRL: check it before anything is recorded.
        key = vouch.ca_key(root, root_key)
        revoked = vouch.revoker(publish=False).revoke_ca(name, reason)
        crls = vouch.crl_producer.produce(root, key, vouch.issuer_urls(root), shards=[-1])
    print(
        f"Revoked CA {name} (certificate {revoked.serial}, {revoked.reason}); "
        f"root CRL number {crls[0].number} lists it"
    )
