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


def _read_export(path: Path) -> list[dict[str, Any]]:
    from vouch.errors import BadInput

    try:
        with path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the export {path}: {exc}") from exc


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
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recompute the whole log, check every signed tree head and every certificate's entry."""
    from rich.progress import Progress

    from vouch.services.audit import VerifyReport, verify_export

    with errors_to_exit(), Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("verifying the audit log", total=None)

        def progress(done: int) -> None:
            bar.update(task, completed=done)

        if from_export is not None:
            report: VerifyReport = verify_export(
                _read_export(from_export), _load_key(key) if key else None, progress=progress
            )
        else:
            vouch = _open(ctx)
            if key is not None:
                vouch.audit_public_key = lambda: _load_key(key)
            report = vouch.audit.verify(progress=progress)
    if as_json:
        _print_json(
            {
                "ok": report.ok,
                "entries": report.entries,
                "tree_heads": report.heads,
                "certificates": report.certificates,
                "uncovered": report.uncovered,
                "problems": report.problems,
            }
        )
    else:
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
) -> None:
    """Verify a proof offline: needs only the proof file and the audit public key."""
    from vouch.errors import BadInput
    from vouch.services.audit import check_proof

    with errors_to_exit():
        try:
            proof = json.loads(proof_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read the proof {proof_file}: {exc}") from exc
        problems = check_proof(proof, _load_key(key))
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
    """Check that a tree head saved earlier is consistent with today's log."""
    from vouch.errors import BadInput
    from vouch.services.audit import head_from_json

    with errors_to_exit():
        try:
            saved = head_from_json(json.loads(head_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise BadInput(f"cannot read the tree head {head_file}: {exc}") from exc
        problems = _open(ctx).audit.witness(saved)
    for problem in problems:
        print(f"DIVERGENCE: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(10)
    print(f"consistent: the log extends the saved tree head of size {saved.size}")
