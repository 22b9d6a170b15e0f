"""Lifecycle KPIs and alerts: renewed versus expired, expiring soon, stale CRLs, keys that do not
sign; on /metrics of a running server, and from `vouch monitor` to a real webhook and a command."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.conftest import make_home, passphrase
from tests.servers import VouchServer, free_port, run_vouch

from vouch.clock import FixedClock
from vouch.services.authority import IssuanceRequest
from vouch.services.monitor import LIFETIME_BUCKETS, alerts
from vouch.wiring import DEFAULT_LINT_ALLOW, Vouch
from vouch.x509.names import parse_name

START = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _issue(vouch: Vouch, *names: str, days: int) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = IssuanceRequest(
        key.public_key(),
        tuple(parse_name(n) for n in names),
        "tls-server",
        lifetime=dt.timedelta(days=days),
    )
    return vouch.authority().issue(request).serial


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Vouch, FixedClock]]:
    clock = FixedClock(START)
    make_home(tmp_path / "home", clock=clock, lint_allow=list(DEFAULT_LINT_ALLOW)).close()
    vouch = Vouch(tmp_path / "home", passphrase=passphrase, clock=clock)
    yield vouch, clock
    vouch.close()


def test_renewed_expired_and_expiring_are_told_apart(clocked: tuple[Vouch, FixedClock]) -> None:
    vouch, clock = clocked
    _issue(vouch, "a.example.com", days=10)
    _issue(vouch, "b.example.com", "c.example.com", days=10)
    _issue(vouch, "d.example.com", days=30)
    revoked = _issue(vouch, "e.example.com", days=10)
    vouch.revoker().revoke(revoked, "superseded")
    clock.advance(5 * DAY)
    _issue(vouch, "a.example.com", days=30)  # renews a
    _issue(vouch, "b.example.com", days=30)  # c is not covered again: b+c not renewed
    clock.advance(6 * DAY)

    report = vouch.monitor.report(expiry_warning=dt.timedelta(days=30))
    group = ("issuing", "tls-server")
    assert report.renewed[group] == 1
    assert report.expired_unrenewed[group] == 1
    assert report.renewal_rate() == 0.5
    # Valid now: d (19 days left), the new a and b (24 days left).
    assert report.valid[group] == 3
    assert sum(report.expiring[7].values()) == 0
    assert sum(report.expiring[30].values()) == 3
    # Inside a 30-day warning window and replaced by nothing: all three current ones.
    assert sorted(e.names for e in report.expiring_unrenewed) == [
        ("dns:a.example.com",),
        ("dns:b.example.com",),
        ("dns:d.example.com",),
    ]
    histogram = report.lifetimes[group]
    assert histogram.count == 6
    # Lifetimes of 10, 10, 30, 10 (revoked, still issued), 30 and 30 days, counted inclusively
    # (notAfter - notBefore + 1 s) as vouch sets them.
    assert histogram.total_seconds == 120 * 86400
    cumulative = dict(histogram.cumulative())
    assert cumulative[str(7 * 86400.0)] == 0
    assert cumulative[str(30 * 86400.0)] == 6
    assert cumulative["+Inf"] == 6
    assert len(cumulative) == len(LIFETIME_BUCKETS) + 1

    # Each unreplaced one is an alert; none is within two days of expiry, so none is critical.
    found = [
        a for a in alerts(report, vouch.monitor_thresholds()) if a.kind == "certificate.expiring"
    ]
    assert len(found) == 3 and {a.severity for a in found} == {"warning"}


def test_a_crl_past_its_next_update_is_a_critical_alert(
    clocked: tuple[Vouch, FixedClock],
) -> None:
    vouch, clock = clocked
    thresholds = vouch.monitor_thresholds()
    fresh = vouch.monitor.report(expiry_warning=dt.timedelta(days=14))
    assert not [a for a in alerts(fresh, thresholds) if a.kind == "crl.stale"]
    clock.advance(4 * DAY + dt.timedelta(hours=2))  # past half of the 7-day CRL validity
    late = alerts(vouch.monitor.report(expiry_warning=DAY), thresholds)
    assert {(a.kind, a.severity) for a in late if a.kind == "crl.stale"} == {
        ("crl.stale", "warning")
    }
    clock.advance(3 * DAY)  # past nextUpdate
    stale = alerts(vouch.monitor.report(expiry_warning=DAY), thresholds)
    issuing = [a for a in stale if a.kind == "crl.stale" and a.subject == "issuing"]
    assert issuing and issuing[0].severity == "critical"
    assert "passed its nextUpdate" in issuing[0].message


def test_a_key_that_cannot_sign_is_reported(clocked: tuple[Vouch, FixedClock]) -> None:
    vouch, _ = clocked
    healthy = vouch.key_health()
    assert healthy and all(k.ok for k in healthy)
    key_file = vouch.home / "keys" / "issuing.key.pem"
    key_file.write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\ngarbage\n")
    fresh = Vouch(vouch.home, passphrase=passphrase, clock=FixedClock(START))
    try:
        checks = {k.ca: k for k in fresh.key_health()}
    finally:
        fresh.close()
    assert not checks["issuing"].ok and checks["issuing"].message
    report = vouch.monitor.report(expiry_warning=DAY, key_checks=lambda: list(checks.values()))
    found = [a for a in alerts(report, vouch.monitor_thresholds()) if a.kind == "key.unusable"]
    assert [(a.subject, a.severity) for a in found] == [("issuing", "critical")]


class _Hook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    server.shutdown()
    server.server_close()


def test_vouch_monitor_alerts_a_webhook_and_a_command(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    home = tmp_path / "home"
    vouch = make_home(home, lint_allow=list(DEFAULT_LINT_ALLOW))
    serial = _issue(vouch, "soon.example.com", days=1)
    _issue(vouch, "later.example.com", days=60)
    vouch.close()
    out = tmp_path / "alerts.json"

    result = run_vouch(
        home, "monitor", "--webhook", url, "--command", f"tee {out}", "--json", check=False
    )
    assert result.returncode == 11, result.stderr
    shown = json.loads(result.stdout)
    assert [a["subject"] for a in shown["alerts"] if a["kind"] == "certificate.expiring"] == [
        serial
    ]
    assert shown["report"]["expiring"] == {"7d": 1, "30d": 1}
    assert shown["report"]["keys"] and all(k["ok"] for k in shown["report"]["keys"])
    assert len(received) == 1 and received[0]["alerts"] == shown["alerts"]
    expiring = next(a for a in received[0]["alerts"] if a["kind"] == "certificate.expiring")
    assert expiring["severity"] == "critical" and "soon.example.com" in expiring["message"]
    assert json.loads(out.read_text())["alerts"] == shown["alerts"]

    # A webhook that is down: the alert is not lost silently.
    dead = f"http://127.0.0.1:{free_port()}/"
    failed = run_vouch(home, "monitor", "--webhook", dead, "--no-verify-audit", check=False)
    assert failed.returncode == 12
    assert "the alert webhook failed" in failed.stderr and "Traceback" not in failed.stderr
    bad = run_vouch(home, "monitor", "--webhook", "file:///etc/passwd", check=False)
    assert bad.returncode == 3 and "must be an http(s) URL" in bad.stderr


def test_a_healthy_pki_raises_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    vouch = make_home(home, lint_allow=list(DEFAULT_LINT_ALLOW))
    _issue(vouch, "fine.example.com", days=60)
    vouch.close()
    result = run_vouch(home, "monitor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no alerts" in result.stdout and "1 valid certificates" in result.stdout


def test_metrics_carry_the_lifecycle_kpis(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    vouch = make_home(
        home, public_url=f"http://127.0.0.1:{port}", lint_allow=list(DEFAULT_LINT_ALLOW)
    )
    _issue(vouch, "m.example.com", days=5)
    _issue(vouch, "n.example.com", days=90)
    vouch.close()
    with VouchServer(home, http_port=port, https=False) as server:
        # The figures are computed in the background right after start: wait for them.
        deadline = time.monotonic() + 30
        text = ""
        while "vouch_certificate_lifetime_seconds_count" not in text:
            assert time.monotonic() < deadline, "no lifecycle figures on /metrics"
            time.sleep(0.2)
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
                text = response.read().decode()
    lines = text.splitlines()

    def value(prefix: str) -> float:
        matches = [line for line in lines if line.startswith(prefix)]
        assert matches, f"{prefix} not in /metrics"
        return float(matches[0].rsplit(" ", 1)[1])

    labels = 'ca="issuing",profile="tls-server"'
    assert value(f"vouch_certificate_lifetime_seconds_count{{{labels}}}") == 2
    assert value(f"vouch_certificate_lifetime_seconds_sum{{{labels}}}") == 95 * 86400
    assert value(f'vouch_certificates_expiring{{{labels},within="7d"}}') == 1
    assert value(f'vouch_certificates_expiring{{{labels},within="30d"}}') == 1
    assert value('vouch_key_healthy{ca="issuing"}') == 1
    assert value('vouch_crl_next_update_seconds{ca="issuing",shard="-1"}') > 6 * 86400
    assert value("vouch_audit_log_entries") > 0
    assert value("vouch_certificates_expiring_unrenewed") == 1
