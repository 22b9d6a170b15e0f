"""``vouch ceremony``: Offline root ceremonies: create a root, sign an intermediate CSR, sign the root CRL, roll over, import transcripts."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vouch.cli.context import EXIT_CODES, CliState, errors_to_exit, fail, passphrase_source

if TYPE_CHECKING:
    from vouch.services.ceremony import Ceremony, Outcome

app = typer.Typer(no_args_is_help=True)

DirOption = Annotated[
    Path, typer.Option("--dir", help="The ceremony directory (root certificate, state, key file).")
]
OperatorOption = Annotated[
    list[str],
    typer.Option("--operator", help="Who performs the ceremony (repeatable; recorded)."),
]
ModuleOption = Annotated[
    str | None,
    typer.Option("--pkcs11-module", help="PKCS#11 module for an HSM root key.", show_default=False),
]
PinOption = Annotated[
    str | None,
    typer.Option(
        "--pkcs11-pin-file",
        help="File with the token's user PIN (else VOUCH_PKCS11_PIN).",
        show_default=False,
    ),
]


@contextmanager
def _ceremony(
    ctx: typer.Context,
    directory: Path,
    operators: list[str],
    module: str | None,
    pin_file: str | None,
) -> Iterator[Ceremony]:
    from vouch.wiring import open_ceremony

    state: CliState = ctx.obj
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ceremony, pkcs11 = open_ceremony(
        directory,
        passphrase=passphrase_source(CliState(directory, state.passphrase_file), confirm_new=True),
        operators=operators,
        host=socket.gethostname(),
        pkcs11_module=module,
        pkcs11_pin_file=pin_file,
    )
    try:
        yield ceremony
    finally:
        pkcs11.close()


def _report(outcome: Outcome) -> None:
    print(f"Ceremony {outcome.kind} done.")
    for artifact in outcome.artifacts:
        from hashlib import sha256

        print(f"  {artifact.type:<26} {artifact.name:<20} {artifact.file}")
        print(f"  {'':<26} SHA-256 {sha256(artifact.der).hexdigest()}")
    print(f"Transcript: {outcome.transcript}")
    print(f"Signature:  {outcome.signature}")
    print("Carry both to the online side: vouch ceremony import TRANSCRIPT")


def _root_key_ref(spec: str, name: str) -> str:
    from vouch.keys.base import new_key_ref

    if spec.strip() in ("file", "file:"):
        return f"file:{name}.key.pem"  # in the ceremony directory
    return str(new_key_ref(spec, name))


@app.command("create-root")
def create_root_command(
    ctx: typer.Context,
    directory: DirOption,
    operator: OperatorOption,
    organization: Annotated[str, typer.Option("--organization", help="Organization (O).")],
    public_url: Annotated[
        str, typer.Option("--public-url", help="Base URL of the online side's CRLs and CA certs.")
    ],
    country: Annotated[str, typer.Option("--country")] = "US",
    key_type: Annotated[str, typer.Option("--key-type")] = "ec-p384",
    validity: Annotated[str, typer.Option("--validity")] = "20y",
    name: Annotated[str, typer.Option("--name", help="The root's name.")] = "root",
    key_backend: Annotated[
        str,
        typer.Option(
            "--key-backend",
            help="file (NAME.key.pem in --dir, encrypted) or pkcs11:token=LABEL[;object=KEY].",
        ),
    ] = "file",
    pkcs11_module: ModuleOption = None,
    pkcs11_pin_file: PinOption = None,
) -> None:
    """Create a root key and self-signed certificate in an empty ceremony directory."""
    from vouch.durations import parse_duration
    from vouch.keys.base import KeyRef
    from vouch.x509.keytypes import parse_key_type

    with (
        errors_to_exit(),
        _ceremony(ctx, directory, operator, pkcs11_module, pkcs11_pin_file) as ceremony,
    ):
        outcome = ceremony.create_root(
            organization=organization,
            country=country,
            key_type=parse_key_type(key_type),
            validity=parse_duration(validity),
            key_ref=KeyRef.parse(_root_key_ref(key_backend, name)),
            public_url=public_url,
            name=name,
        )
    _report(outcome)


@app.command("adopt")
def adopt_command(
    ctx: typer.Context,
    directory: DirOption,
    operator: OperatorOption,
    public_url: Annotated[
        str, typer.Option("--public-url", help="Base URL of the online side's CRLs and CA certs.")
    ],
) -> None:
    """Make a `vouch init --offline-root DIR` directory a ceremony directory."""
    with errors_to_exit(), _ceremony(ctx, directory, operator, None, None) as ceremony:
        outcome = ceremony.adopt_root(public_url=public_url)
    _report(outcome)


@app.command("sign-csr")
def sign_csr_command(
    ctx: typer.Context,
    csr: Path,
    directory: DirOption,
    operator: OperatorOption,
    name: Annotated[str, typer.Option("--name", help="The intermediate's name (e.g. issuing-2).")],
    validity: Annotated[str, typer.Option("--validity")] = "5y",
    permit_dns: Annotated[
        list[str] | None, typer.Option("--permit-dns", show_default=False)
    ] = None,
    exclude_dns: Annotated[
        list[str] | None, typer.Option("--exclude-dns", show_default=False)
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Sign without asking for typed confirmation.")
    ] = False,
    pkcs11_module: ModuleOption = None,
    pkcs11_pin_file: PinOption = None,
) -> None:
    """Sign an intermediate's CSR with the root key, after showing exactly what is signed."""
    from vouch.durations import parse_duration
    from vouch.fsutil import read_limited
    from vouch.x509.build import NameConstraintsSpec
    from vouch.x509.csr import MAX_CSR_BYTES
    from vouch.x509.names import normalize_dns

    with (
        errors_to_exit(),
        _ceremony(ctx, directory, operator, pkcs11_module, pkcs11_pin_file) as ceremony,
    ):
        data = read_limited(csr, MAX_CSR_BYTES, "CSR file")
        constraints = None
        if permit_dns or exclude_dns:
            constraints = NameConstraintsSpec(
                permitted_dns=tuple(normalize_dns(d) for d in permit_dns or ()),
                excluded_dns=tuple(normalize_dns(d) for d in exclude_dns or ()),
            )
        review = ceremony.review_csr(
            data, name=name, validity=parse_duration(validity), name_constraints=constraints
        )
        from vouch.cli.render import iso, print_fields

        print_fields(
            f"The root {review.root} will sign this intermediate certificate",
            {
                "name": review.name,
                "subject": review.subject,
                "names in the CSR": list(review.names) or "(none)",
                "key": review.key_type,
                "public key SHA-256": review.spki_sha256,
                "CSR SHA-256": review.csr_sha256,
                "serial": review.serial,
                "valid from": iso(review.not_before),
                "valid until": iso(review.not_after),
                "path length": review.path_length,
                "extensions": list(review.extensions),
                "issuer": review.issuer,
                "issuer SHA-256": review.issuer_sha256,
            },
        )
        if not yes:
            sys.stdout.write(f"Type the intermediate's name ({review.name}) to sign it: ")
            sys.stdout.flush()
            answer = sys.stdin.readline().strip()
            if answer != review.name:
                fail("not confirmed: nothing was signed", code=EXIT_CODES["conflict"])
        outcome = ceremony.sign_csr(review)
    _report(outcome)


def _revocation(text: str) -> tuple[str, str]:
    serial, _, reason = text.partition(":")
    return serial, reason or "unspecified"


@app.command("sign-crl")
def sign_crl_command(
    ctx: typer.Context,
    directory: DirOption,
    operator: OperatorOption,
    revoke: Annotated[
        list[str] | None,
        typer.Option(
            "--revoke",
            help="SERIAL[:REASON] of an intermediate to revoke now (repeatable; final).",
            show_default=False,
        ),
    ] = None,
    root: Annotated[
        str | None,
        typer.Option(
            "--root", help="Sign this root's CRL (default the active root).", show_default=False
        ),
    ] = None,
    validity: Annotated[str, typer.Option("--validity")] = "180d",
    pkcs11_module: ModuleOption = None,
    pkcs11_pin_file: PinOption = None,
) -> None:
    """Sign the root's CRL: every intermediate revoked so far, and those given now."""
    from vouch.durations import parse_duration

    with (
        errors_to_exit(),
        _ceremony(ctx, directory, operator, pkcs11_module, pkcs11_pin_file) as ceremony,
    ):
        outcome = ceremony.sign_crl(
            [_revocation(r) for r in revoke or ()],
            root_name=root,
            validity=parse_duration(validity),
        )
    _report(outcome)


@app.command("rollover")
def rollover_command(
    ctx: typer.Context,
    directory: DirOption,
    operator: OperatorOption,
    new_name: Annotated[str, typer.Option("--new-name", help="The new root's name.")],
    key_type: Annotated[str, typer.Option("--key-type")] = "ec-p384",
    validity: Annotated[str, typer.Option("--validity")] = "20y",
    key_backend: Annotated[str, typer.Option("--key-backend")] = "file",
    pkcs11_module: ModuleOption = None,
    pkcs11_pin_file: PinOption = None,
) -> None:
    """A new root, with cross-certificates old->new and new->old so both anchors chain."""
    from vouch.durations import parse_duration
    from vouch.keys.base import KeyRef
    from vouch.x509.keytypes import parse_key_type

    with (
        errors_to_exit(),
        _ceremony(ctx, directory, operator, pkcs11_module, pkcs11_pin_file) as ceremony,
    ):
        outcome = ceremony.rollover(
            new_name=new_name,
            key_type=parse_key_type(key_type),
            validity=parse_duration(validity),
            key_ref=KeyRef.parse(_root_key_ref(key_backend, new_name)),
        )
    _report(outcome)


@app.command("import")
def import_command(
    ctx: typer.Context,
    transcript: Path,
    signature: Annotated[
        Path | None,
        typer.Option("--signature", help="Default: TRANSCRIPT.sig.", show_default=False),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Record the new CA under this name.", show_default=False),
    ] = None,
    key_backend: Annotated[
        str | None,
        typer.Option(
            "--key-backend",
            help="Where this home holds the new intermediate's key (the reference printed by "
            "`vouch ca new-intermediate --csr-out`); checked against the certificate.",
            show_default=False,
        ),
    ] = None,
    standby: Annotated[
        bool, typer.Option("--standby", help="Record a new intermediate as standby.")
    ] = False,
    trust_root: Annotated[
        str | None,
        typer.Option(
            "--trust-root",
            help="SHA-256 of a new root (create-root transcripts), as read at the ceremony.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Verify a ceremony transcript against the known root and record what it produced."""
    from vouch.fsutil import read_limited
    from vouch.keys.base import KeyRef
    from vouch.services.ceremony_import import MAX_TRANSCRIPT
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    with errors_to_exit():
        data = read_limited(transcript, MAX_TRANSCRIPT, "transcript")
        sig_path = signature or transcript.with_name(transcript.name + ".sig")
        sig = read_limited(sig_path, 16 * 1024, "transcript signature")
        vouch = Vouch(state.home, passphrase=passphrase_source(state))
        try:
            result = vouch.ceremony_importer().import_transcript(
                data,
                sig,
                name=name,
                key_ref=None if key_backend is None else KeyRef.parse(key_backend),
                standby=standby,
                trust_root_sha256=trust_root,
            )
        finally:
            vouch.close()
    print(f"Imported ceremony {result.kind} {result.transcript_id} (signed by {result.signer}):")
    for line in result.recorded:
        print(f"  recorded {line}")
