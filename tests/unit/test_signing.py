"""Certificates and CRLs signed through the Signer protocol: template TBS, outside signature."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from vouch.x509.der import encode_tlv, read_tlv
from vouch.x509.signing import (
    finish_certificate,
    sign_crl,
    template_certificate,
)

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signing test")])


def _keys() -> list[CertificateIssuerPrivateKeyTypes]:
    return [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=4096),
        ed25519.Ed25519PrivateKey.generate(),
    ]


@pytest.mark.parametrize("key", _keys(), ids=["p256", "p384", "rsa4096", "ed25519"])
def test_certificate_signed_by_signer_carries_the_template_tbs(
    key: CertificateIssuerPrivateKeyTypes,
) -> None:
    builder = (
        x509.CertificateBuilder()
        .subject_name(NAME)
        .issuer_name(NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
    )
    template = template_certificate(builder, key)
    # The template is signed by a throwaway key, not by the CA key.
    with pytest.raises(InvalidSignature):
        template.verify_directly_issued_by(template)
    final = finish_certificate(template, key)
    assert final.tbs_certificate_bytes == template.tbs_certificate_bytes
    assert final.signature_algorithm_oid == template.signature_algorithm_oid
    final.verify_directly_issued_by(final)  # self-signed by the real key


def test_crl_signed_by_signer_verifies() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    revoked = x509.RevokedCertificateBuilder().serial_number(1234).revocation_date(NOW).build()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(NAME)
        .last_update(NOW)
        .next_update(NOW + dt.timedelta(days=7))
        .add_revoked_certificate(revoked)
    )
    crl = sign_crl(builder, key)
    assert crl.is_signature_valid(key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(1234) is not None


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=0xF0), st.binary(max_size=70_000))
def test_der_round_trip(tag: int, content: bytes) -> None:
    encoded = encode_tlv(tag, content)
    read_tag, header, length = read_tlv(encoded, 0)
    assert (read_tag, length) == (tag, len(content))
    assert encoded[header:] == content


def test_der_refuses_truncation() -> None:
    encoded = encode_tlv(0x30, b"x" * 300)
    with pytest.raises(ValueError):
        read_tlv(encoded[:-1], 0)
    with pytest.raises(ValueError):
        read_tlv(b"\x30", 0)
