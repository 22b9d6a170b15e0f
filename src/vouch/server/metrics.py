"""Prometheus metrics of the server (its own registry: several apps in one process stay apart)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from vouch.services.monitor import LifecycleReport


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ocsp_requests = Counter(
            "vouch_ocsp_requests",
            "OCSP requests answered, by outcome",
            ["status"],
            registry=self.registry,
        )
        self.ocsp_hit = self.ocsp_requests.labels(status="presigned")
        self.ocsp_signed = self.ocsp_requests.labels(status="signed")
        self.ocsp_malformed = self.ocsp_requests.labels(status="malformed")
        self.ocsp_unauthorized = self.ocsp_requests.labels(status="unauthorized")
        self.ocsp_try_later = self.ocsp_requests.labels(status="try_later")
        self.crl_requests = Counter(
            "vouch_crl_requests", "CRL downloads", ["ca"], registry=self.registry
        )
        self.crl_age = Gauge(
            "vouch_crl_age_seconds",
            "Age of the newest CRL of each CA and shard",
            ["ca", "shard"],
            registry=self.registry,
        )
        self.crl_number = Gauge(
            "vouch_crl_number", "Newest CRL number", ["ca"], registry=self.registry
        )
        self.ocsp_oldest = Gauge(
            "vouch_ocsp_oldest_response_age_seconds",
            "Age of the oldest pre-signed OCSP response served",
            registry=self.registry,
        )
        self.ocsp_cached = Gauge(
            "vouch_ocsp_presigned_responses",
            "Pre-signed OCSP responses held in memory",
            registry=self.registry,
        )
        self.certificates = Gauge(
            "vouch_certificates",
            "Certificates in the store by status",
            ["status"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "vouch_revocation_leader",
            "1 when this node runs the cluster's periodic revocation work",
            registry=self.registry,
        )
        self.job_errors = Counter(
            "vouch_job_errors", "Periodic job failures", ["job"], registry=self.registry
        )
        # Open incidents (vouch incident): certificates under the compromised CA still to replace.
        self.incident_remaining = Gauge(
            "vouch_incident_remaining_certificates",
            "Certificates under a CA declared compromised that nothing has replaced yet",
            ["ca"],
            registry=self.registry,
        )
        self.incident_replaced = Gauge(
            "vouch_incident_replaced_certificates",
            "Certificates under a CA declared compromised that another CA has replaced",
            ["ca"],
            registry=self.registry,
        )
        self.lifecycle = LifecycleCollector()
        self.registry.register(self.lifecycle)


class LifecycleCollector(Collector):
    """The lifecycle KPIs from the newest ``LifecycleReport`` (recomputed periodically; a
    scrape only reads it)."""

    def __init__(self) -> None:
        self.report: LifecycleReport | None = None

    def collect(self) -> Iterator[Metric]:
        report = self.report
        if report is None:
            return
        now = report.generated_at
        labels = ["ca", "profile"]
        lifetime = HistogramMetricFamily(
            "vouch_certificate_lifetime_seconds",
            "Lifetime of the certificates issued (notAfter - notBefore + 1 s)",
            labels=labels,
        )
        for (ca, profile), histogram in sorted(report.lifetimes.items()):
            lifetime.add_metric(
                [ca, profile], histogram.cumulative(), sum_value=histogram.total_seconds
            )
        yield lifetime
        outcomes = GaugeMetricFamily(
            "vouch_certificates_ended",
            "Certificates past notAfter: renewed before expiry, or expired while nothing "
            "replaced them",
            labels=[*labels, "outcome"],
        )
        for (ca, profile), count in sorted(report.renewed.items()):
            outcomes.add_metric([ca, profile, "renewed"], count)
        for (ca, profile), count in sorted(report.expired_unrenewed.items()):
            outcomes.add_metric([ca, profile, "expired"], count)
        yield outcomes
        rate = report.renewal_rate()
        if rate is not None:
            yield GaugeMetricFamily(
                "vouch_renewal_rate",
                "Renewed / (renewed + expired while in use), over all certificates past notAfter",
                value=rate,
            )
        expiring = GaugeMetricFamily(
            "vouch_certificates_expiring",
            "Valid certificates expiring within the window",
            labels=[*labels, "within"],
        )
        for days, counter in sorted(report.expiring.items()):
            for (ca, profile), count in sorted(counter.items()):
                expiring.add_metric([ca, profile, f"{days}d"], count)
        yield expiring
        yield GaugeMetricFamily(
            "vouch_certificates_expiring_unrenewed",
            "Valid certificates inside the expiry warning window that nothing has replaced",
            value=len(report.expiring_unrenewed),
        )
        crl_left = GaugeMetricFamily(
            "vouch_crl_next_update_seconds",
            "Seconds until the newest CRL's nextUpdate (negative: stale)",
            labels=["ca", "shard"],
        )
        for crl in report.crls:
            crl_left.add_metric([crl.ca, str(crl.shard)], (crl.next_update - now).total_seconds())
        yield crl_left
        ocsp = report.ocsp
        if ocsp is not None and ocsp.soonest_next_update is not None:
            yield GaugeMetricFamily(
                "vouch_ocsp_next_update_seconds",
                "Seconds until the soonest nextUpdate of a pre-signed OCSP response",
                value=(ocsp.soonest_next_update - now).total_seconds(),
            )
        if ocsp is not None:
            yield GaugeMetricFamily(
                "vouch_ocsp_stale_responses",
                "OCSP responses waiting to be re-signed (revoked or changed since)",
                value=ocsp.stale,
            )
        yield GaugeMetricFamily(
            "vouch_audit_log_entries", "Entries in the audit log", value=report.audit_entries
        )
        if report.audit_head_at is not None:
            yield GaugeMetricFamily(
                "vouch_audit_tree_head_age_seconds",
                "Age of the newest signed tree head",
                value=(now - report.audit_head_at).total_seconds(),
            )
        if report.last_incident_mttr is not None:
            yield GaugeMetricFamily(
                "vouch_incident_last_mttr_seconds",
                "Time to recover from the last closed CA incident",
                value=report.last_incident_mttr,
            )
        if report.keys:
            keys = GaugeMetricFamily(
                "vouch_key_healthy", "1 when the CA key signed and verified", labels=["ca"]
            )
            for key in report.keys:
                keys.add_metric([key.ca], 1 if key.ok else 0)
            yield keys
        yield GaugeMetricFamily(
            "vouch_lifecycle_report_age_seconds",
            "Seconds since these lifecycle figures were computed",
            value=(dt.datetime.now(dt.UTC) - now).total_seconds(),
        )
