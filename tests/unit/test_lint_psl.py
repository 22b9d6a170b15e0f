"""pkilint's internal-name checks still fire when its validators share one Public Suffix List."""

from __future__ import annotations

import datetime as dt

import publicsuffixlist
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pkilint.common import alternative_name

from vouch.x509.lint import LintProfile, PkilintLinter


def _leaf(name: str) -> bytes:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_internal_names_are_found_and_public_ones_are_not() -> None:
    linter = PkilintLinter()
    internal = {f.code for f in linter.lint(_leaf("printer.corp"), LintProfile.CABF_SERVERAUTH)}
    public = {f.code for f in linter.lint(_leaf("www.example.com"), LintProfile.CABF_SERVERAUTH)}
    assert "cabf.internal_domain_name" in internal
    assert "cabf.internal_domain_name" not in public
    # The library's module is left as it was found.
    assert alternative_name.publicsuffixlist is publicsuffixlist
