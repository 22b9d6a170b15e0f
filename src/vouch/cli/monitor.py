"""``vouch monitor``: check the PKI's lifecycle and alert a webhook or a command."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from vouch.cli.context import CliState, errors_to_exit, passphrase_source
from vouch.durations import parse_duration
from vouch.errors import BadInput

ALERTS_EXIT = 11  # checks ran and found something that needs a person
DELIVERY_EXIT = 12  # an alert could not be delivered


def monitor_command(
    ctx: typer.Context,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook",
            help="POST alerts as JSON here (default: monitor.webhook_url).",
            show_default=False,
        ),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="Run this with the alerts JSON on stdin (default: monitor.command).",
            show_default=False,
        ),
    ] = None,
    watch: Annotated[
        str | None,
        typer.Option(
            "--watch",
            help="Keep checking at this interval (e.g. 5m) instead of once.",
            show_default=False,
        ),
    ] = None,
    verify_audit: Annotated[
        bool, typer.Option("--verify-audit/--no-verify-audit", help="Run a full audit verify.")
    ] = True,
    check_keys: Annotated[
        bool, typer.Option("--check-keys/--no-check-keys", help="Sign once with every CA key.")
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report and alerts as JSON.")
    ] = False,
) -> None:
    """Check certificates, CRLs, OCSP, CA keys and the audit log; alert on what needs a person.

    Exit status: 0 all well, 11 alerts raised, 12 an alert could not be delivered."""
    from vouch.services.monitor import Alert, alerts
    from vouch.wiring import Vouch

    state: CliState = ctx.obj
    with errors_to_exit():
        interval = parse_duration(watch).total_seconds() if watch else None
        if interval is not None and interval < 1:
            raise BadInput("--watch needs an interval of at least 1s")
        vouch = Vouch(state.home, passphrase=passphrase_source(state))
        settings = vouch.config.monitor
        webhook = webhook or settings.webhook_url
        if webhook and not webhook.startswith(("http://", "https://")):
            raise BadInput(f"the alert webhook must be an http(s) URL, not {webhook!r}")
        command = command or settings.command
        while True:
            report = vouch.monitor.report(
                expiry_warning=parse_duration(settings.expiry_warning),
                key_checks=vouch.key_health if check_keys else None,
            )
            found = alerts(report, vouch.monitor_thresholds())
            if verify_audit:
                verified = vouch.audit.verify()
                found.extend(
                    Alert("audit.divergence", "critical", "audit", problem)
                    for problem in verified.problems
                )
            payload = {
                "source": "vouch",
                "home": str(state.home),
                "generated_at": report.as_json()["generated_at"],
                "alerts": [a.as_json() for a in found],
            }
            delivered = _deliver(payload, webhook, command) if found else True
            _render(report.as_json(), payload, as_json)
            if interval is None:
                break
            time.sleep(interval)
        vouch.close()
    if not delivered:
        raise SystemExit(DELIVERY_EXIT)
    if found:
        raise SystemExit(ALERTS_EXIT)


def _deliver(payload: dict[str, Any], webhook: str | None, command: str | None) -> bool:
    body = json.dumps(payload).encode("utf-8")
    ok = True
    if webhook:
        request = urllib.request.Request(  # noqa: S310 (http(s) only: checked above)
            webhook, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            print(f"error: the alert webhook failed: {reason}", file=sys.stderr)
            ok = False
    if command:
        try:
            result = subprocess.run(
                shlex.split(command), input=body, capture_output=True, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"error: the alert command failed: {exc}", file=sys.stderr)
            return False
        if result.returncode != 0:
            print(
                f"error: the alert command exited with status {result.returncode}",
                file=sys.stderr,
            )
            ok = False
    return ok


def _render(report: dict[str, Any], payload: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"report": report, "alerts": payload["alerts"]}, indent=2))
        sys.stdout.write("\n")
        return
    valid = sum(g["count"] for g in report["valid"])
    rate = report["renewal_rate"]
    print(
        f"{valid} valid certificates; expiring within 7 days: {report['expiring'].get('7d', 0)}, "
        f"30 days: {report['expiring'].get('30d', 0)}; renewal rate: "
        + ("n/a" if rate is None else f"{rate:.1%}")
    )
    for alert in payload["alerts"]:
        print(f"{alert['severity'].upper()}: {alert['message']}")
    if not payload["alerts"]:
        print("no alerts")
