"""Lifecycle KPIs and alerts: what an operator of a PKI is judged by, from the store.

The report is computed from the inventory in one streamed pass, so `vouch serve` can refresh the
Prometheus figures every minute and `vouch monitor` can turn the same figures into alerts.

Renewed or expired: a certificate that reached its notAfter unrevoked counts as *renewed* when
each of its names was in a certificate issued after it and before it expired (the usual
renewal, a re-keyed one, or the names spread over several certificates), and as *expired while
in use* otherwise. vouch cannot see whether a certificate is still deployed; one that nobody
replaced is the case the figure exists to catch.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vouch.clock import Clock
from vouch.services.ocsp import RESPONDER_PROFILE
from vouch.store.monitor import InventoryRow, MonitorStore, OcspFreshness
from vouch.store.records import AuthorityRecord, CRLRecord

# Lifetime histogram bucket bounds (upper, inclusive), in seconds: an hour, a day, a week, 30,
# 47 (CA/B 2029), 90, 100 (CA/B 2027), 200 (CA/B 2026) and 398 days.
LIFETIME_BUCKETS: tuple[float, ...] = tuple(
    float(s) for s in (3600, 86400, 7 * 86400, 30 * 86400, 47 * 86400, 90 * 86400,
                       100 * 86400, 200 * 86400, 398 * 86400)
)  # fmt: skip
EXPIRY_WINDOWS = (7, 30)  # days
CHART_DAYS = 90
INCIDENT_CLOSED = "incident.finished"  # its data carries "mttr_seconds" (the incident runbook)

# vouch's own OCSP responder certificates: renewed by the server and watched through OCSP
# freshness, not subscriber certificates.
INFRASTRUCTURE = (RESPONDER_PROFILE,)

Group = tuple[str, str]  # (CA, profile)


@dataclass
class LifetimeHistogram:
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LIFETIME_BUCKETS) + 1))
    count: int = 0
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(LIFETIME_BUCKETS, seconds)] += 1
        self.count += 1
        self.total_seconds += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus histograms want them, ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*LIFETIME_BUCKETS, float("inf")), self.buckets, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else str(bound), running))
        return out


@dataclass(frozen=True)
class ExpiringCertificate:
    ca: str
    profile: str
    serial: str
    names: tuple[str, ...]
    not_after: dt.datetime


@dataclass(frozen=True)
class CrlState:
    ca: str
    shard: int
    number: int
    this_update: dt.datetime
    next_update: dt.datetime


@dataclass(frozen=True)
class KeyHealth:
    ca: str
    ok: bool
    message: str = ""


@dataclass
class LifecycleReport:
    generated_at: dt.datetime
    lifetimes: dict[Group, LifetimeHistogram] = field(default_factory=dict)
    renewed: Counter[Group] = field(default_factory=Counter)
    expired_unrenewed: Counter[Group] = field(default_factory=Counter)
    valid: Counter[Group] = field(default_factory=Counter)
    expiring: dict[int, Counter[Group]] = field(default_factory=dict)  # days -> counts
    # Valid, unrevoked, inside the warning window, and nothing issued after them for their names.
    expiring_unrenewed: list[ExpiringCertificate] = field(default_factory=list)
    crls: list[CrlState] = field(default_factory=list)
    ocsp: OcspFreshness | None = None
    audit_entries: int = 0
    audit_head_at: dt.datetime | None = None
    last_incident_mttr: float | None = None
    last_incident_at: dt.datetime | None = None
    keys: list[KeyHealth] = field(default_factory=list)
    # For charts: valid certificates by days until notAfter, and certificates issued by days ago
    # (index 0: the next / the last 24 hours), over CHART_DAYS.
    expiring_by_day: list[int] = field(default_factory=lambda: [0] * CHART_DAYS)
    issued_by_day: list[int] = field(default_factory=lambda: [0] * CHART_DAYS)

    def renewal_rate(self, group: Group | None = None) -> float | None:
        """Renewed / (renewed + expired while in use); None before anything has expired."""
        if group is None:
            renewed, lost = sum(self.renewed.values()), sum(self.expired_unrenewed.values())
        else:
            renewed, lost = self.renewed[group], self.expired_unrenewed[group]
        return None if renewed + lost == 0 else renewed / (renewed + lost)

    def as_json(self) -> dict[str, Any]:
        def groups(counter: Counter[Group]) -> list[dict[str, Any]]:
            return [
                {"ca": ca, "profile": profile, "count": n}
                for (ca, profile), n in sorted(counter.items())
            ]

        average = {
            f"{ca}/{profile}": h.total_seconds / h.count
            for (ca, profile), h in sorted(self.lifetimes.items())
            if h.count
        }
        return {
            "generated_at": _iso(self.generated_at),
            "lifetime_average_seconds": average,
            "valid": groups(self.valid),
            "renewed": groups(self.renewed),
            "expired_unrenewed": groups(self.expired_unrenewed),
            "renewal_rate": self.renewal_rate(),
            "expiring": {f"{days}d": sum(c.values()) for days, c in self.expiring.items()},
            "expiring_unrenewed": [
                {
                    "ca": e.ca,
                    "profile": e.profile,
                    "serial": e.serial,
                    "names": list(e.names),
                    "not_after": _iso(e.not_after),
                }
                for e in self.expiring_unrenewed
            ],
            "crls": [
                {
                    "ca": c.ca,
                    "shard": c.shard,
                    "number": c.number,
                    "this_update": _iso(c.this_update),
                    "next_update": _iso(c.next_update),
                }
                for c in self.crls
            ],
            "ocsp": None
            if self.ocsp is None
            else {
                "responses": self.ocsp.responses,
                "stale": self.ocsp.stale,
                "oldest_this_update": _iso(self.ocsp.oldest_this_update),
                "soonest_next_update": _iso(self.ocsp.soonest_next_update),
            },
            "audit": {"entries": self.audit_entries, "head_at": _iso(self.audit_head_at)},
            "last_incident": None
            if self.last_incident_mttr is None
            else {"mttr_seconds": self.last_incident_mttr, "at": _iso(self.last_incident_at)},
            "keys": [{"ca": k.ca, "ok": k.ok, "message": k.message} for k in self.keys],
        }


@dataclass(frozen=True)
class Alert:
    kind: str  # certificate.expiring | crl.stale | ocsp.stale | key.unusable | audit.*
    severity: str  # warning | critical
    subject: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "subject": self.subject,
            "message": self.message,
        }


@dataclass(frozen=True)
class Thresholds:
    expiry_warning: dt.timedelta
    crl_validity: dt.timedelta
    ocsp_validity: dt.timedelta
    head_interval: dt.timedelta


class Monitor:
    def __init__(
        self,
        *,
        store: MonitorStore,
        clock: Clock,
        authorities: Callable[[], Sequence[AuthorityRecord]],
        latest_crls: Callable[[], Sequence[CRLRecord]],
        latest_head_at: Callable[[], dt.datetime | None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._authorities = authorities
        self._latest_crls = latest_crls
        self._latest_head_at = latest_head_at

    def report(
        self,
        *,
        expiry_warning: dt.timedelta,
        key_checks: Callable[[], Sequence[KeyHealth]] | None = None,
    ) -> LifecycleReport:
        now = self._clock.now()
        report = LifecycleReport(generated_at=now)
        report.expiring = {days: Counter() for days in EXPIRY_WINDOWS}
        # Two streamed passes rather than the inventory in memory. First, for each name, the
        # notBefore of every certificate holding it, ascending (the inventory comes oldest
        # first): a renewal is a later one issued before notAfter.
        issued_with: dict[str, list[dt.datetime]] = defaultdict(list)
        for row in self._store.inventory(exclude_profiles=INFRASTRUCTURE):
            for name in row.names:
                issued_with[name].append(row.not_before)
        for row in self._store.inventory(exclude_profiles=INFRASTRUCTURE):
            group = (row.ca, row.profile)
            histogram = report.lifetimes.get(group)
            if histogram is None:
                histogram = report.lifetimes[group] = LifetimeHistogram()
            # RFC 5280 counts validity inclusively: notAfter - notBefore + 1 s.
            histogram.observe((row.not_after - row.not_before).total_seconds() + 1)
            age = (now - row.not_before).days
            if 0 <= age < CHART_DAYS:
                report.issued_by_day[age] += 1
            if row.revoked:
                continue
            if row.not_after < now:
                if _succeeded(row, issued_with, until=row.not_after):
                    report.renewed[group] += 1
                else:
                    report.expired_unrenewed[group] += 1
                continue
            report.valid[group] += 1
            left = row.not_after - now
            if left.days < CHART_DAYS:
                report.expiring_by_day[left.days] += 1
            for days in EXPIRY_WINDOWS:
                if left <= dt.timedelta(days=days):
                    report.expiring[days][group] += 1
            if left <= expiry_warning and not _succeeded(row, issued_with, until=now):
                report.expiring_unrenewed.append(
                    ExpiringCertificate(
                        row.ca, row.profile, row.serial, tuple(sorted(row.names)), row.not_after
                    )
                )
        names = {a.id: a.name for a in self._authorities()}
        report.crls = [
            CrlState(names[c.authority_id], c.shard, c.number, c.this_update, c.next_update)
            for c in self._latest_crls()
            if c.authority_id in names
        ]
        report.ocsp = self._store.ocsp_freshness()
        report.audit_entries = self._store.audit_size()
        report.audit_head_at = self._latest_head_at()
        incident = self._store.latest_event(INCIDENT_CLOSED)
        if incident is not None:
            at, data = incident
            mttr = json.loads(data).get("mttr_seconds")
            if isinstance(mttr, int | float):
                report.last_incident_mttr, report.last_incident_at = float(mttr), at
        if key_checks is not None:
            report.keys = list(key_checks())
        return report


def alerts(report: LifecycleReport, thresholds: Thresholds) -> list[Alert]:
    """What needs a person, from a report: expiries nobody renewed, stale revocation data,
    keys that do not sign, an audit log without fresh signed heads."""
    now = report.generated_at
    found: list[Alert] = []
    for cert in sorted(report.expiring_unrenewed, key=lambda e: e.not_after):
        left = cert.not_after - now
        found.append(
            Alert(
                "certificate.expiring",
                "critical" if left <= dt.timedelta(days=2) else "warning",
                cert.serial,
                f"certificate {cert.serial} ({', '.join(cert.names)}; CA {cert.ca}) expires "
                f"{_iso(cert.not_after)}, in {_span(left)}, and nothing has replaced it",
            )
        )
    # The producer re-signs CRLs at half-life: one older than that (with an hour's grace) is stuck.
    crl_due = thresholds.crl_validity / 2 + dt.timedelta(hours=1)
    for crl in report.crls:
        where = f"{crl.ca}" + ("" if crl.shard < 0 else f" shard {crl.shard}")
        if crl.next_update <= now:
            found.append(
                Alert(
                    "crl.stale",
                    "critical",
                    where,
                    f"the CRL of {where} (number {crl.number}) passed its nextUpdate "
                    f"{_iso(crl.next_update)}: relying parties treat revocation as unknown",
                )
            )
        elif now - crl.this_update > crl_due:
            found.append(
                Alert(
                    "crl.stale",
                    "warning",
                    where,
                    f"the CRL of {where} (number {crl.number}) is {_span(now - crl.this_update)} "
                    "old and was not re-signed at half-life: is `vouch serve` running?",
                )
            )
    ocsp = report.ocsp
    if ocsp is not None and ocsp.responses:
        ocsp_due = thresholds.ocsp_validity / 2 + dt.timedelta(hours=1)
        if ocsp.soonest_next_update is not None and ocsp.soonest_next_update <= now:
            found.append(
                Alert(
                    "ocsp.stale",
                    "critical",
                    "ocsp",
                    f"a pre-signed OCSP response passed its nextUpdate "
                    f"{_iso(ocsp.soonest_next_update)}",
                )
            )
        elif ocsp.oldest_this_update is not None and now - ocsp.oldest_this_update > ocsp_due:
            found.append(
                Alert(
                    "ocsp.stale",
                    "warning",
                    "ocsp",
                    f"the oldest pre-signed OCSP response is {_span(now - ocsp.oldest_this_update)}"
                    " old and was not re-signed at half-life",
                )
            )
    for key in report.keys:
        if not key.ok:
            found.append(
                Alert("key.unusable", "critical", key.ca, f"CA {key.ca} cannot sign: {key.message}")
            )
    head_due = thresholds.head_interval * 2 + dt.timedelta(minutes=1)
    if report.audit_head_at is None:
        found.append(
            Alert("audit.no-head", "warning", "audit", "the audit log has no signed tree head")
        )
    elif now - report.audit_head_at > head_due:
        found.append(
            Alert(
                "audit.stale-head",
                "warning",
                "audit",
                f"the newest signed tree head is {_span(now - report.audit_head_at)} old",
            )
        )
    return found


def _succeeded(
    row: InventoryRow, issued_with: dict[str, list[dt.datetime]], until: dt.datetime
) -> bool:
    """Whether every name of ``row`` is in a certificate issued after it and no later than
    ``until``."""
    for name in row.names:
        times = issued_with[name]
        later = bisect.bisect_right(times, row.not_before)
        if later == len(times) or times[later] > until:
            return False
    return True


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    return f"{max(seconds, 0) // 60} minutes"
