"""``vouch cert``: issue, list, show and export certificates."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from vouch.cli import remote
from vouch.cli.context import CliState, errors_to_exit, fail, passphrase_source

app = typer.Typer(no_args_is_help=True)


@app.callback()
def _group(ctx: typer.Context) -> None:
    remote.guard(ctx, "cert")  # with --server, only what the API offers (cli/remote.py)


def _open(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    return Vouch(state.home, passphrase=passphrase_source(state))


ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile", help="tls-server, tls-client, tls-server-client, ...", show_default=False
    ),
]
LifetimeOption = Annotated[
    str | None,
    typer.Option("--lifetime", help="e.g. 30d; default from the profile.", show_default=False),
]
CaOption = Annotated[
    str | None,
    typer.Option("--ca", help="Issuing CA (default: issuance.default_ca).", show_default=False),
]


@app.command("issue")
def issue_command(
    ctx: typer.Context,
    csr: Annotated[Path, typer.Option("--csr", help="The CSR (PEM or DER).")],
    profile: ProfileOption = None,
    lifetime: LifetimeOption = None,
    ca: CaOption = None,
    cn: Annotated[
        bool, typer.Option("--cn", help="Put the CSR's common name in the subject.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the chain here (else stdout).", show_default=False),
    ] = None,
) -> None:
    """Issue a certificate for a CSR; writes the chain (leaf, then intermediate) as PEM."""
    if (api := remote.client(ctx)) is not None:
        remote.cert_issue(api, csr=csr, profile=profile, lifetime=lifetime, ca=ca, cn=cn, out=out)
        return
    from vouch.durations import parse_duration
    from vouch.fsutil import atomic_write, probe_writable, read_limited
    from vouch.services.authority import IssuanceRequest
    from vouch.x509.csr import MAX_CSR_BYTES, load_csr

    with errors_to_exit():
        data = read_limited(csr, MAX_CSR_BYTES, "CSR file")
        if out is not None:
            probe_writable(out)
        vouch = _open(ctx)
        parsed = load_csr(data, max_names=int(vouch.config.policy.get("max_names", 100)))
        request = IssuanceRequest.from_csr(
            parsed,
            profile=profile or vouch.config.issuance.default_profile,
            lifetime=parse_duration(lifetime) if lifetime else None,
            want_common_name=cn,
        )
        issued = vouch.authority(ca).issue(request)
        from vouch.faults import checkpoint

        checkpoint("cli.before-write")
        if out is not None:
            with _issued_but_unwritten(issued.serial):
                atomic_write(out, issued.pem_chain())
    if out is None:
        sys.stdout.write(issued.pem_chain().decode("ascii"))
    else:
        print(f"Issued {issued.serial} ({issued.profile}) -> {out}", file=sys.stderr)


@app.command("new")
def new_command(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="DNS names, IPs, emails or URIs.")],
    profile: ProfileOption = None,
    key_type: Annotated[str, typer.Option("--key-type")] = "ec-p256",
    lifetime: LifetimeOption = None,
    ca: CaOption = None,
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where to write NAME.key.pem and NAME.pem.")
    ] = Path(),
) -> None:
    """Generate a key here and issue a certificate for it (the quick-start case)."""
    from cryptography.hazmat.primitives import serialization

    from vouch.durations import parse_duration
    from vouch.fsutil import atomic_write
    from vouch.services.authority import IssuanceRequest
    from vouch.x509.keytypes import generate_private_key, parse_key_type
    from vouch.x509.names import dedupe, parse_name

    with errors_to_exit():
        parsed_names = dedupe(parse_name(n) for n in names)
        kind = parse_key_type(key_type)
        if not out_dir.is_dir():
            fail(f"output directory {out_dir} does not exist", code=3)
        from vouch.fsutil import probe_writable

        probe_writable(out_dir / ".vouch-probe")
        stem = parsed_names[0].value.replace("*", "wildcard").replace("/", "_").replace(":", "_")
        key_path, chain_path = out_dir / f"{stem}.key.pem", out_dir / f"{stem}.pem"
        for path in (key_path, chain_path):
            if path.exists():
                fail(f"{path} already exists; refusing to overwrite it", code=6)
        vouch = _open(ctx)
        key = generate_private_key(kind)
        # A server reads its key unattended, so the leaf key is unencrypted but private (0600).
        # Written before anything is issued: a key that cannot be written (a full disk) costs
        # nothing, where a certificate issued for a key already lost could not be used.
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write(key_path, key_pem, mode=0o600, overwrite=False)
        try:
            issued = vouch.authority(ca).issue(
                IssuanceRequest(
                    public_key=key.public_key(),
                    names=parsed_names,
                    profile=profile or vouch.config.issuance.default_profile,
                    lifetime=parse_duration(lifetime) if lifetime else None,
                )
            )
        except BaseException:
            key_path.unlink(missing_ok=True)  # nothing was issued for it
            raise
        with _issued_but_unwritten(issued.serial):
            atomic_write(chain_path, issued.pem_chain(), overwrite=False)
    print(
        f"Issued {issued.serial} for {', '.join(names)} ({issued.profile}, until "
        f"{issued.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
    )
    print(f"  key:   {key_path}  (mode 0600)")
    print(f"  chain: {chain_path}")


@app.command("list")
def list_command(
    ctx: typer.Context,
    expiring: Annotated[
        str | None,
        typer.Option(
            "--expiring", help="Only valid ones expiring within, e.g. 30d.", show_default=False
        ),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="valid, revoked, expired or pending.", show_default=False),
    ] = None,
    ca: CaOption = None,
    profile: ProfileOption = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Names containing this text.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The certificates this CA has issued."""
    from vouch.cli.render import certificate_json, print_json, print_table
    from vouch.durations import parse_duration
    from vouch.store.repository import CertificateQuery

    if status is not None and status not in ("valid", "revoked", "expired", "pending"):
        fail(f"unknown status {status!r}", hint="valid, revoked, expired or pending", code=3)
    if (api := remote.client(ctx)) is not None:
        options = {"ca": ca, "profile": profile, "name": name}
        remote.cert_list(api, expiring=expiring, status=status, as_json=as_json, **options)
        return
    with errors_to_exit():
        vouch = _open(ctx)
        now = vouch.clock.now()
        query = CertificateQuery(
            authority=ca,
            profile=profile,
            name_contains=name,
            state="intent" if status == "pending" else "issued",
            not_after_before=now + parse_duration(expiring) if expiring else None,
            not_after_after=now if (expiring or status == "valid") else None,
            revoked=False
            if (expiring or status == "valid")
            else (True if status == "revoked" else None),
        )
        records = vouch.store.certificates(query)
    rows = [certificate_json(r, now) for r in records]
    if status is not None:
        rows = [r for r in rows if r["status"] == status]
    if as_json:
        print_json(rows)
        return
    print_table(
        f"Certificates ({len(rows)})",
        ["serial", "ca", "profile", "names", "not after", "status"],
        [
            [r["serial"], r["ca"], r["profile"], ", ".join(r["names"]), r["not_after"], r["status"]]
            for r in rows
        ],
    )


def _find_one(vouch, serial: str, ca: str | None):  # type: ignore[no-untyped-def]
    from vouch.errors import BadInput, NotFound
    from vouch.store.repository import CertificateQuery
    from vouch.x509.serials import format_serial, parse_serial

    hex_serial = format_serial(parse_serial(serial))
    matches = vouch.store.certificates(
        CertificateQuery(serial=hex_serial, authority=ca, state=None)
    )
    if not matches:
        raise NotFound(
            f"no certificate with serial {hex_serial}", hint="vouch cert list shows them"
        )
    if len(matches) > 1:
        raise BadInput(f"serial {hex_serial} exists under several CAs", hint="add --ca NAME")
    return matches[0]


@app.command("show")
def show_command(
    ctx: typer.Context,
    serial: str,
    ca: CaOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One certificate by serial (hex)."""
    from vouch.cli.render import certificate_json, print_fields, print_json

    if (api := remote.client(ctx)) is not None:
        remote.cert_show(api, serial=serial, ca=ca, as_json=as_json)
        return

    with errors_to_exit():
        vouch = _open(ctx)
        record = _find_one(vouch, serial, ca)
        data = certificate_json(record, vouch.clock.now())
    if as_json:
        print_json(data)
    else:
        print_fields(f"Certificate {record.serial}", data)


@app.command("export")
def export_command(
    ctx: typer.Context,
    serial: str,
    fmt: Annotated[str, typer.Option("--format", help="pem, der or pkcs12.")] = "pem",
    ca: CaOption = None,
    chain: Annotated[
        bool, typer.Option("--chain/--no-chain", help="Include the intermediates (pem, pkcs12).")
    ] = True,
    key: Annotated[
        Path | None,
        typer.Option("--key", help="pkcs12: the private key to include.", show_default=False),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (else stdout).", show_default=False)
    ] = None,
) -> None:
    """Export a certificate as PEM, DER or PKCS#12 (password from VOUCH_EXPORT_PASSWORD)."""
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    from vouch.errors import BadInput, Conflict
    from vouch.fsutil import atomic_write

    if fmt not in ("pem", "der", "pkcs12"):
        fail(f"unknown format {fmt!r}", hint="pem, der or pkcs12", code=3)
    with errors_to_exit():
        vouch = _open(ctx)
        record = _find_one(vouch, serial, ca)
        if record.der is None:
            raise Conflict(f"certificate {record.serial} was never signed (pending)")
        certificate = x509.load_der_x509_certificate(record.der)
        intermediates = list(vouch.chain_above(vouch.store.get_authority(record.authority)))
        intermediates.insert(
            0,
            x509.load_der_x509_certificate(vouch.store.get_authority(record.authority).certificate),
        )
        if fmt == "der":
            data = record.der
        elif fmt == "pem":
            certs = [certificate, *(intermediates if chain else [])]
            data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        else:
            private_key = None
            if key is not None:
                try:
                    private_key = serialization.load_pem_private_key(key.read_bytes(), None)
                except (OSError, ValueError, TypeError) as exc:
                    raise BadInput(
                        f"cannot read an unencrypted PEM private key from {key}"
                    ) from exc
            password = os.environ.get("VOUCH_EXPORT_PASSWORD", "").encode("utf-8")
            encryption = (
                serialization.BestAvailableEncryption(password)
                if password
                else serialization.NoEncryption()
            )
            if private_key is not None and not password:
                raise BadInput("a PKCS#12 with a private key needs VOUCH_EXPORT_PASSWORD set")
            data = pkcs12.serialize_key_and_certificates(
                record.serial.encode("ascii"),
                private_key,  # type: ignore[arg-type]
                certificate,
                intermediates if chain else None,
                encryption,
            )
        if out is not None:
            atomic_write(out, data, mode=0o600 if fmt == "pkcs12" else 0o644)
            return
    if fmt != "pem" and sys.stdout.isatty():
        fail(f"refusing to write binary {fmt.upper()} to a terminal", hint="use --out FILE", code=3)
    sys.stdout.buffer.write(data)


@contextmanager
def _issued_but_unwritten(serial: str) -> Iterator[None]:
    """A certificate is issued and recorded; if writing it fails, say which one and how to get it."""
    from vouch.errors import VouchError

    try:
        yield
    except VouchError as exc:
        exc.message = f"certificate {serial} was issued and recorded, but {exc.message}"
        exc.hint = f"fix the cause and fetch it with: vouch cert export {serial} --format pem"
        raise


def _parse_time(text: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    from vouch.errors import BadInput

    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadInput(
            f"not a date and time: {text!r}", hint="use ISO 8601, e.g. 2026-11-01T12:00:00Z"
        ) from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


@app.command("revoke")
def revoke_command(
    ctx: typer.Context,
    serial: Annotated[str, typer.Argument(help="Serial in hex, as `vouch cert list` shows it.")],
    reason: Annotated[
        str,
        typer.Option(
            "--reason",
            help="keyCompromise, superseded, cessationOfOperation, affiliationChanged, "
            "privilegeWithdrawn or unspecified.",
        ),
    ],
    invalidity_date: Annotated[
        str | None,
        typer.Option(
            "--invalidity-date",
            help="When the key is known or suspected to have been compromised (ISO 8601).",
            show_default=False,
        ),
    ] = None,
    ca: CaOption = None,
) -> None:
    """Revoke a certificate, at once and for good; keyCompromise also blocks its key."""
    if (api := remote.client(ctx)) is not None:
        with errors_to_exit():
            when = _parse_time(invalidity_date) if invalidity_date else None
        remote.cert_revoke(api, serial=serial, reason=reason, invalidity_date=when, ca=ca)
        return
    with errors_to_exit():
        vouch = _open(ctx)
        revoked = vouch.revoker().revoke(
            serial,
            reason,
            ca=ca,
            invalidity_date=_parse_time(invalidity_date) if invalidity_date else None,
        )
    print(
        f"Revoked {revoked.serial} of CA {revoked.ca} ({revoked.reason}) at "
        f"{revoked.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    if revoked.key_blocked:
        print("Its public key is blocked: vouch will sign nothing more for it.")
    for note in vouch.publish_notes:
        print(f"note: {note}", file=sys.stderr)
