"""An independent pkilint run for tests: all findings, unfiltered by vouch's lint settings."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkilint import finding_filter, loader
from pkilint.cabf import serverauth
from pkilint.pkix import certificate as pkix_certificate
from pkilint.pkix import extension, name

_BLOCKING = {"FATAL", "ERROR", "WARNING"}


def _findings(results: Any) -> list[str]:
    out = []
    for result in results:
        for description in result.finding_descriptions:
            if description.finding.severity.name in _BLOCKING:
                out.append(
                    f"{description.finding.code} ({description.finding.severity.name}) {description.message or ''}"
                )
    return out


def cabf_findings(cert: x509.Certificate) -> list[str]:
    der = cert.public_bytes(serialization.Encoding.DER)
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "cert")
    cert_type = serverauth.determine_certificate_type(doc)
    validator = pkix_certificate.create_pkix_certificate_validator_container(
        serverauth.create_decoding_validators(), serverauth.create_validators(cert_type)
    )
    results, _ = finding_filter.filter_results(
        serverauth.create_serverauth_finding_filters(cert_type), validator.validate(doc.root)
    )
    return _findings(results)


def rfc5280_findings(cert: x509.Certificate) -> list[str]:
    der = cert.public_bytes(serialization.Encoding.DER)
    doc = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "cert")
    validator = pkix_certificate.create_pkix_certificate_validator_container(
        pkix_certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            pkix_certificate.create_issuer_validator_container([]),
            pkix_certificate.create_validity_validator_container(),
            pkix_certificate.create_subject_validator_container([]),
            pkix_certificate.create_extensions_validator_container([]),
            pkix_certificate.create_spki_validator_container([]),
        ],
    )
    return _findings(validator.validate(doc.root))
