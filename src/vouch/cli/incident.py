"""``vouch incident``: emergency rotation after an issuing CA's key is compromised."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source

app = typer.Typer(no_args_is_help=True)

SHOWN = 50  # outstanding certificates listed for people (--json lists all)


def _open(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    return Vouch(state.home, passphrase=passphrase_source(state))


@app.command("declare")
def declare_command(
    ctx: typer.Context,
    ca: Annotated[str, typer.Option("--ca", help="The compromised issuing CA.")],
    reason: Annotated[
        str, typer.Option("--reason", help="keyCompromise or cACompromise.")
    ] = "keyCompromise",
    deadline: Annotated[
        str | None,
        typer.Option(
            "--deadline",
            help="After this long (e.g. 2h) `finish` revokes what is left even if not replaced.",
            show_default=False,
        ),
    ] = None,
    standby: Annotated[
        str | None,
        typer.Option(
            "--standby",
            help="The standby intermediate that takes over (default: the one under the same "
            "root valid longest).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Declare CA NAME compromised: issuance under it stops at once and moves to a standby
    intermediate, and every ACME client is told to renew now (RFC 9773)."""
    from vouch.cli.render import iso, print_json
    from vouch.durations import parse_duration

    with errors_to_exit():
        span = None if deadline is None else parse_duration(deadline)
        vouch = _open(ctx)
        try:
            declared = vouch.incident_service().declare(
                ca, reason=reason, deadline=span, standby=standby
            )
        finally:
            vouch.close()
    incident = declared.incident
    if as_json:
        print_json(
            {
                "incident": incident.id,
                "ca": incident.authority,
                "replacement": incident.replacement,
                "reason": incident.reason,
                "declared_at": iso(incident.declared_at),
                "deadline": iso(incident.deadline),
                "certificates": incident.certificates,
                "renewal_overrides": declared.renewal_overrides,
                "notes": list(declared.notes),
            }
        )
        return
    print(
        f"Incident {incident.id} declared {iso(incident.declared_at)}: CA {incident.authority} "
        f"({incident.reason}) issues nothing more."
    )
    if declared.replacement is not None:
        print(
            f"Issuance moved to {declared.replacement.name} (serial {declared.replacement.serial})."
        )
    print(
        f"{incident.certificates} unexpired certificate(s) under {incident.authority}; ACME "
        "renewal information now says: renew now."
    )
    if incident.deadline is not None:
        print(f"Deadline: {iso(incident.deadline)} (then `vouch incident finish` revokes the rest)")
    for note in declared.notes:
        print(f"warning: {note}")
    print(
        "Next: vouch incident status; when done, vouch incident finish (docs/incident-runbook.md)"
    )


@app.command("status")
def status_command(
    ctx: typer.Context,
    ca: Annotated[
        str | None, typer.Option("--ca", help="The CA of the incident.", show_default=False)
    ] = None,
    number: Annotated[
        int | None, typer.Option("--incident", help="The incident's number.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Progress: certificates replaced and remaining, by owner, and which have not come back."""
    from vouch.cli.render import iso, print_json, print_table

    with errors_to_exit():
        vouch = _open(ctx)
        try:
            service = vouch.incident_service()
            progress = service.progress(service.find(ca, number))
        finally:
            vouch.close()
    data = progress.as_json()
    if as_json:
        print_json(data)
        return
    incident = progress.incident
    print(
        f"Incident {incident.id}: CA {incident.authority} ({incident.reason}), {incident.status}; "
        f"declared {iso(incident.declared_at)}"
        + (f", issuance moved to {incident.replacement}" if incident.replacement else "")
    )
    if incident.mttr_seconds is not None:
        print(f"Finished {iso(incident.finished_at)}: MTTR {incident.mttr_seconds:.1f} s")
    else:
        print(f"Elapsed: {data['elapsed_seconds']:.0f} s" + (
            f"; deadline {iso(incident.deadline)}" if incident.deadline else ""
        ))  # fmt: skip
    print(
        f"Certificates: {progress.total} | replaced {progress.replaced} | remaining "
        f"{len(progress.remaining)} | revoked unreplaced {progress.revoked} | expired unreplaced "
        f"{progress.expired}"
    )
    if progress.owners:
        print_table(
            "By owner",
            ["owner", "certificates", "replaced", "remaining"],
            [
                [owner, str(c.total), str(c.replaced), str(c.remaining)]
                for owner, c in sorted(progress.owners.items())
            ],
        )
    if progress.remaining:
        print_table(
            f"Not replaced yet ({len(progress.remaining)})",
            ["serial", "names", "owner", "not after"],
            [
                [o.serial, ", ".join(o.names), o.owner, iso(o.not_after) or ""]
                for o in progress.remaining[:SHOWN]
            ],
        )
        if len(progress.remaining) > SHOWN:
            print(f"... and {len(progress.remaining) - SHOWN} more (--json lists all)")


@app.command("finish")
def finish_command(
    ctx: typer.Context,
    ca: Annotated[
        str | None, typer.Option("--ca", help="The CA of the incident.", show_default=False)
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Revoke the old certificates even if not all are replaced."),
    ] = False,
    root_key: Annotated[
        Path | None,
        typer.Option(
            "--root-key",
            help="Offline root directory holding root.key.pem (to sign the root's CRL here).",
            show_default=False,
        ),
    ] = None,
    transcript: Annotated[
        Path | None,
        typer.Option(
            "--root-crl-transcript",
            help="The transcript of `vouch ceremony sign-crl` revoking the CA (offline root).",
            show_default=False,
        ),
    ] = None,
    leaf_reason: Annotated[
        str, typer.Option("--leaf-reason", help="Reason for the old leaves' revocation.")
    ] = "keyCompromise",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Revoke the old certificates and the CA (root CRL), block its key, publish, and close the
    incident with its MTTR."""
    from vouch.cli.render import iso, print_json
    from vouch.errors import BadInput
    from vouch.fsutil import read_limited
    from vouch.services.ceremony_import import MAX_TRANSCRIPT

    with errors_to_exit():
        if transcript is not None and root_key is not None:
            raise BadInput("give --root-key or --root-crl-transcript, not both")
        signed = None
        if transcript is not None:
            data = read_limited(transcript, MAX_TRANSCRIPT, "transcript")
            sig_path = transcript.with_name(transcript.name + ".sig")
            signed = (data, read_limited(sig_path, 16 * 1024, "transcript signature"))
        vouch = _open(ctx)
        try:
            service = vouch.incident_service()
            incident = service.find(ca)
            key = None
            if signed is None:
                root = vouch.store.authority_by_id(
                    vouch.store.authority_by_id(incident.authority_id).parent_id or 0
                )
                if root_key is not None or root.key_ref != "none:":
                    key = vouch.ca_key(root, root_key)
            finished = service.finish(
                incident, force=force, root_key=key, transcript=signed, leaf_reason=leaf_reason
            )
        finally:
            vouch.close()
    result = finished.incident
    if as_json:
        print_json(
            {
                "incident": result.id,
                "ca": result.authority,
                "status": result.status,
                "leaves_revoked": finished.leaves_revoked,
                "mttr_seconds": result.mttr_seconds,
                "finished_at": iso(result.finished_at),
                "ceremony_step": finished.ceremony_step,
                "notes": list(finished.notes),
            }
        )
        return
    if finished.leaves_revoked:
        print(f"Revoked {finished.leaves_revoked} certificate(s) under {result.authority}; "
              "its CRLs and OCSP responses are re-signed.")  # fmt: skip
    for note in finished.notes:
        print(f"warning: {note}")
    if finished.ceremony_step is not None:
        print(f"Incident {result.id} is still open: the root is offline, so CA "
              f"{result.authority} is revoked in a ceremony.")  # fmt: skip
        print(finished.ceremony_step)
        return
    print(
        f"Incident {result.id} finished {iso(result.finished_at)}: CA {result.authority} revoked "
        f"on the root's CRL, its key blocked. MTTR {result.mttr_seconds:.1f} s."
    )
    print(
        "Publish: a running `vouch serve` serves it within seconds; static mirrors: vouch publish"
    )
