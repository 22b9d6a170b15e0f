"""Prometheus metrics of the server (its own registry: several apps in one process stay apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
