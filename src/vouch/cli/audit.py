"""``vouch audit``: verify the log, prove entries, export it, and witness saved tree heads."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vouch.cli.context import CliState, errors_to_exit, fail, passphrase_source

app = typer.Typer(no_args_is_help=True)

KeyOption = Annotated[
    Path | None,
    typer.Option(
        "--key",
        help="The audit public key (PEM) to trust (default: the home's audit-key.pem).",
        show_default=False,
    ),
]
TrustEmbeddedOption = Annotated[
    bool,
    typer.Option(
        "--trust-embedded-key",
        help="With --from-export and no other key: trust the key the export names (this only "
        "shows the export is self-consistent; compare the printed fingerprint with the CA's).",
    ),
]


def _open(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    return Vouch(state.home, passphrase=passphrase_source(state))


def _load_key(path: Path):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    from vouch.errors import BadInput

    try:
        return serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the audit public key {path}: {exc}") from exc


def _fingerprint(public_key: Any) -> str:
    from vouch.services.audit import key_id

    return f"SHA256:{key_id(public_key)}"


def _trusted_key(
    state: CliState, key: Path | None, trust_embedded_key: bool, named: Any
) -> tuple[Any, str]:
    """The audit key to check an export with, and where it came from: --key, else the home's
    audit-key.pem, else (only when asked to) the key the export itself names."""
    from vouch.errors import BadInput
    from vouch.wiring import AUDIT_KEY_FILE

    if key is not None and trust_embedded_key:
        raise BadInput("give --key or --trust-embedded-key, not both")
    if key is not None:
        return _load_key(key), str(key)
    home_key = state.home / AUDIT_KEY_FILE
    if not trust_embedded_key and home_key.exists():
        return _load_key(home_key), str(home_key)
    if not trust_embedded_key:
        raise BadInput(
            "no audit key to trust: an export's own key proves nothing (a forger re-signs with "
            "a key of their own)",
            hint="pass --key with the CA's published audit public key, or run where the CA's "
            "home is (--home); --trust-embedded-key checks only that the export is "
            "self-consistent",
        )
    if named is None:
        raise BadInput("the export names no audit key; pass --key")
    print(
        f"warning: trusting the audit key the export names, {_fingerprint(named)}: this shows "
        "only that the export is self-consistent; compare that fingerprint with the one the CA "
        "publishes",
        file=sys.stderr,
    )
    return named, "the export (--trust-embedded-key)"


def _read_export(path: Path) -> list[dict[str, Any]]:
    from vouch.errors import BadInput

    try:
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the export {path}: {exc}") from exc


def _read_head(path: Path):  # type: ignore[no-untyped-def]
    from vouch.errors import BadInput
    from vouch.services.audit import head_from_json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the tree head {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a vouch tree head")
    return head_from_json(data)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    from_export: Annotated[
        Path | None,
        typer.Option(
            "--from-export", help="Verify an export file instead of the store.", show_default=False
        ),
    ] = None,
    key: KeyOption = None,
    trust_embedded_key: TrustEmbeddedOption = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recompute the whole log, check every signed tree head and every certificate's entry.

    An export is checked with --key, else the home's audit key; never with the key it names
    unless --trust-embedded-key says so."""
    from rich.progress import Progress

    from vouch.errors import BadInput
    from vouch.services.audit import VerifyReport, read_export, verify_export

    with errors_to_exit(), Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("verifying the audit log", total=None)

        def progress(done: int) -> None:
            bar.update(task, completed=done)

        if from_export is not None:
            export = read_export(_read_export(from_export))
            trusted, source = _trusted_key(ctx.obj, key, trust_embedded_key, export.named_key)
            report: VerifyReport = verify_export(export, trusted, progress=progress)
        else:
            if trust_embedded_key:
                raise BadInput("--trust-embedded-key applies to --from-export only")
            vouch = _open(ctx)
            if key is not None:
                vouch.audit_public_key = lambda: _load_key(key)
                source = str(key)
            else:
                source = "the home's audit key"
            report = vouch.audit.verify(progress=progress)
            trusted = vouch.audit.public_key()
    if as_json:
        _print_json(
            {
                "ok": report.ok,
                "entries": report.entries,
                "tree_heads": report.heads,
                "certificates": report.certificates,
                "uncovered": report.uncovered,
                "problems": report.problems,
                "audit_key": {"fingerprint": _fingerprint(trusted), "from": source},
            }
        )
    else:
        print(f"audit key {_fingerprint(trusted)} (from {source})")
        print(
            f"{report.entries} entries, {report.heads} signed tree heads, "
            f"{report.certificates} certificates checked"
        )
        if report.uncovered:
            print(f"{report.uncovered} newest entries are not yet under a signed tree head")
        for problem in report.problems:
            print(f"DIVERGENCE: {problem}", file=sys.stderr)
    if not report.ok:
        raise SystemExit(10)
    if not as_json:
        print("audit log verified")


@app.command("prove")
def prove_command(
    ctx: typer.Context,
    serial: Annotated[str | None, typer.Argument(help="Certificate serial (hex).")] = None,
    index: Annotated[
        int | None, typer.Option("--index", help="An entry by position.", show_default=False)
    ] = None,
) -> None:
    """Print an inclusion proof of a certificate's issuance entry against the newest tree head."""
    with errors_to_exit():
        vouch = _open(ctx)
        if index is not None:
            proof = vouch.audit.prove_index(index)
        elif serial is not None:
            proof = vouch.audit.prove_certificate(serial)
        else:
            fail("give a SERIAL or --index N", code=3)
    _print_json(proof)


@app.command("consistency")
def consistency_command(
    ctx: typer.Context,
    old_size: int,
    new_size: Annotated[int | None, typer.Argument()] = None,
) -> None:
    """Print a consistency proof between two sizes of the log (default: up to the newest head)."""
    with errors_to_exit():
        proof = _open(ctx).audit.prove_consistency(old_size, new_size)
    _print_json(proof)


@app.command("check-proof")
def check_proof_command(
    proof_file: Annotated[Path, typer.Argument(help="A proof from prove or consistency.")],
    key: Annotated[Path, typer.Option("--key", help="The audit public key (PEM).")],
    old_head: Annotated[
        Path | None,
        typer.Option(
            "--old-head",
            help="A consistency proof's start: a signed tree head you saved earlier (JSON from "
            "`vouch audit head` or GET /audit/tree-head). Required for consistency proofs.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Verify a proof offline: needs only the proof file and the audit public key (and, for a
    consistency proof, the tree head you saved earlier that it must start at)."""
    from vouch.errors import BadInput
    from vouch.services.audit import check_proof

    with errors_to_exit():
        try:
            proof = json.loads(proof_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read the proof {proof_file}: {exc}") from exc
        kind = proof.get("type") if isinstance(proof, dict) else None
        if kind == "consistency" and old_head is None:
            raise BadInput(
                "a consistency proof is checked against a tree head you saved earlier: without "
                "one it shows only that two roots are self-consistent",
                hint="pass --old-head SAVED_HEAD.json (from `vouch audit head` or "
                "GET /audit/tree-head, saved before)",
            )
        if kind != "consistency" and old_head is not None:
            raise BadInput("--old-head applies to consistency proofs only")
        saved = _read_head(old_head) if old_head is not None else None
        problems = check_proof(proof, _load_key(key), old_head=saved)
    for problem in problems:
        print(f"INVALID: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(10)
    print(f"{proof.get('type')} proof verified")


@app.command("export")
def export_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Write JSON lines here.")],
) -> None:
    """Write the audit key, every entry and every tree head for an outside verifier."""
    from vouch.fsutil import atomic_write

    with errors_to_exit():
        vouch = _open(ctx)
        lines = [json.dumps(item, sort_keys=True) for item in vouch.audit.export()]
        atomic_write(out, ("\n".join(lines) + "\n").encode("utf-8"))
    print(f"exported {len(lines) - 1} records to {out}")


@app.command("head")
def head_command(
    ctx: typer.Context,
    sign: Annotated[bool, typer.Option("--sign", help="Sign a fresh tree head first.")] = False,
) -> None:
    """Print the newest signed tree head (save it: `vouch audit witness` checks it later)."""
    from vouch.services.audit import head_json

    with errors_to_exit():
        vouch = _open(ctx)
        head = vouch.audit.sign_head() if sign else vouch.audit.latest_head()
        assert head is not None
    _print_json(head_json(head))


@app.command("witness")
def witness_command(
    ctx: typer.Context,
    head_file: Annotated[Path, typer.Argument(help="A tree head saved earlier (JSON).")],
) -> None:
    """Check that a tree head saved earlier is consistent with today's log (every entry's leaf
    recomputed from its content)."""
    with errors_to_exit():
        saved = _read_head(head_file)
        problems = _open(ctx).audit.witness(saved)
    for problem in problems:
        print(f"DIVERGENCE: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(10)
    print(f"consistent: the log extends the saved tree head of size {saved.size}")
