"""``vouch ca``: list, show and create certificate authorities."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vouch.cli import remote
from vouch.cli.context import CliState, errors_to_exit, passphrase_source

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group(ctx: typer.Context) -> None:
    remote.guard(ctx, "ca")  # with --server, only what the API offers (cli/remote.py)


KEY_BACKEND_HELP = (
    "Where the new key is made: file (keys/NAME.key.pem, encrypted), file:PATH, "
    "pkcs11:token=LABEL (object NAME) or pkcs11:token=LABEL;object=KEY."
)


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

    if (api := remote.client(ctx, token=False)) is not None:
        remote.ca_list(api, as_json=as_json)
        return

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

    if (api := remote.client(ctx, token=False)) is not None:
        remote.ca_show(api, name=name, as_json=as_json, pem=pem)
        return
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
    key_backend: Annotated[str, typer.Option("--key-backend", help=KEY_BACKEND_HELP)] = "file",
    csr_out: Annotated[
        Path | None,
        typer.Option(
            "--csr-out",
            help="Make the key and write a CSR here for an offline root ceremony to sign "
            "(then: vouch ceremony import).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """A further issuing CA under the same root (another team, or a standby)."""
    from vouch.durations import parse_duration
    from vouch.x509.build import NameConstraintsSpec
    from vouch.x509.keytypes import parse_key_type
    from vouch.x509.names import normalize_dns

    if csr_out is not None:
        from vouch.keys.base import new_key_ref

        with errors_to_exit():
            vouch = _open(ctx)
            key_ref = new_key_ref(key_backend, name)
            if csr_out.exists():
                from vouch.errors import Conflict

                raise Conflict(f"{csr_out} already exists; refusing to overwrite it")
            admin = vouch.ca_admin()
            pem = admin.intermediate_csr(
                name=name,
                organization=vouch.config.organization,
                country=vouch.config.country,
                key_type=parse_key_type(key_type),
                key_ref=key_ref,
            )
            from vouch.fsutil import atomic_write

            try:
                atomic_write(csr_out, pem, overwrite=False)
            except BaseException:
                from contextlib import suppress

                with suppress(Exception):  # the write's error is the one to report
                    admin.discard_new_key(key_ref)  # no CSR: nobody could ever certify the key
                raise
        print(f"Made the key {key_ref} and its CSR {csr_out}; nothing is recorded yet.")
        print(
            f"After the ceremony signs it: vouch ceremony import TRANSCRIPT --key-backend '{key_ref}'"
        )
        return
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
            key_backend=key_backend,
        )
    print(
        f"Created intermediate {created.record.name} (serial {created.record.serial}, "
        f"{created.record.status}, until {created.record.not_after:%Y-%m-%d}, "
        f"key {created.record.key_ref})"
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


@app.command("activate")
def activate_command(
    ctx: typer.Context,
    name: str,
    replaces: Annotated[
        str | None,
        typer.Option(
            "--replaces",
            help="The active intermediate it takes over from (retired; its CRL and OCSP stay).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start issuing under a standby intermediate (e.g. one signed in a ceremony)."""
    with errors_to_exit():
        vouch = _open(ctx)
        record = vouch.ca_admin().activate(name, replaces=replaces)
    print(f"CA {record.name} is active" + (f"; {replaces} is retired" if replaces else ""))


@app.command("rollover")
def rollover_command(
    ctx: typer.Context,
    name: str,
    new_name: Annotated[
        str | None,
        typer.Option(
            "--new-name",
            help="Name of the new intermediate (default NAME-2, ...).",
            show_default=False,
        ),
    ] = None,
    key_type: Annotated[
        str | None,
        typer.Option("--key-type", help="Default: the old CA's key type.", show_default=False),
    ] = None,
    validity: Annotated[str, typer.Option("--validity")] = "5y",
    key_backend: Annotated[
        str | None,
        typer.Option(
            "--key-backend",
            help=KEY_BACKEND_HELP + " Default: the old CA's backend.",
            show_default=False,
        ),
    ] = None,
    root_key: Annotated[
        Path | None,
        typer.Option(
            "--root-key", help="Offline root directory holding root.key.pem.", show_default=False
        ),
    ] = None,
) -> None:
    """Replace an intermediate with a new one (new key) that issues from now on; the old one is
    retired and keeps its CRL and OCSP until it expires."""
    from vouch.durations import parse_duration
    from vouch.x509.keytypes import parse_key_type

    with errors_to_exit():
        vouch = _open(ctx)
        old = vouch.store.get_authority(name)
        names = {a.name for a in vouch.store.list_authorities()}
        chosen = new_name or next(
            f"{name}-{n}" for n in range(2, 10_000) if f"{name}-{n}" not in names
        )
        backend = key_backend or _backend_of(old.key_ref)
        created = vouch.rollover_intermediate(
            name,
            new_name=chosen,
            key_type=parse_key_type(key_type or old.key_type),
            validity=parse_duration(validity),
            root_key_dir=root_key,
            key_backend=backend,
        )
    print(
        f"Rolled over {name} -> {created.record.name} (serial {created.record.serial}, "
        f"until {created.record.not_after:%Y-%m-%d}, key {created.record.key_ref}); "
        f"{name} is retired and keeps serving revocation until {old.not_after:%Y-%m-%d}"
    )


def _backend_of(key_ref: str) -> str:
    """The --key-backend that makes a sibling of ``key_ref``: same token, or files."""
    scheme, _, location = key_ref.partition(":")
    if scheme == "pkcs11":
        token = next((p for p in location.split(";") if p.startswith("token=")), None)
        if token is not None:
            return f"pkcs11:{token}"
    return "file"
