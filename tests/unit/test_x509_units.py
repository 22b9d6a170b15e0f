"""Pure x509 pieces: durations, serials, names, policy, weak keys, profiles."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from vouch.durations import format_duration, parse_duration
from vouch.errors import BadInput, ConfigError, PolicyViolation
from vouch.x509.keypolicy import check_public_key, fermat_factor, is_roca_vulnerable
from vouch.x509.names import parse_name
from vouch.x509.policy import NamePolicy
from vouch.x509.profiles import BUILTIN_PROFILES, cabf_max_validity
from vouch.x509.serials import format_serial, new_serial, parse_serial


def test_durations() -> None:
    assert parse_duration("90d") == dt.timedelta(days=90)
    assert parse_duration("1y30d") == dt.timedelta(days=395)
    assert parse_duration("12h") == dt.timedelta(hours=12)
    assert format_duration(dt.timedelta(days=30)) == "30d"
    for bad in ("", "d", "10x", "-5d", "5d junk", "0d"):
        with pytest.raises(BadInput):
            parse_duration(bad)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from("smhdwy"))
def test_duration_round_trip(n: int, unit: str) -> None:
    value = parse_duration(f"{n}{unit}")
    assert parse_duration(format_duration(value)) == value


def test_serials() -> None:
    serials = {new_serial() for _ in range(1000)}
    assert len(serials) == 1000
    assert all(64 <= s.bit_length() <= 127 for s in serials)
    serial = 0x0ABC
    assert format_serial(serial) == "0ABC"
    assert parse_serial("0a:bc") == parse_serial("0x0ABC") == serial
    with pytest.raises(BadInput):
        parse_serial("xyz")


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("WWW.Example.COM", "dns", "www.example.com"),
        ("www.example.com.", "dns", "www.example.com"),
        ("*.example.com", "dns", "*.example.com"),
        ("bücher.example", "dns", "xn--bcher-kva.example"),
        ("192.0.2.1", "ip", "192.0.2.1"),
        ("2001:db8::1", "ip", "2001:db8::1"),
        ("alice@example.com", "email", "alice@example.com"),
        ("spiffe://example.com/a", "uri", "spiffe://example.com/a"),
    ],
)
def test_parse_name(text: str, kind: str, value: str) -> None:
    name = parse_name(text)
    assert (name.kind, name.value) == (kind, value)


@pytest.mark.parametrize(
    "text",
    [
        "www.*.example.com",
        "w*.example.com",
        "*.com",
        "exa mple.com",
        "-a.example.com",
        "a\x00.example.com",
        "xn--a.example.com",
        "a" * 64 + ".com",
        "example.123",
        "",
    ],
)
def test_bad_names(text: str) -> None:
    with pytest.raises(BadInput):
        parse_name(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_name_only_normalizes_or_refuses(text: str) -> None:
    try:
        name = parse_name(text)
    except BadInput:
        return
    assert parse_name(name.value) == name  # normal forms are fixed points


def test_name_policy() -> None:
    policy = NamePolicy.from_config(
        "policy",
        {
            "allowed_dns_suffixes": ["example.com"],
            "denied_dns_suffixes": ["bad.example.com"],
            "allowed_ip_ranges": ["10.0.0.0/8"],
            "allowed_email_domains": ["example.com"],
            "max_names": 3,
        },
    )
    policy.check_names(
        [parse_name("a.example.com"), parse_name("10.1.2.3"), parse_name("x@example.com")]
    )
    cases = {
        "badexample.com": "policy.allowed_dns_suffixes",
        "x.bad.example.com": "policy.denied_dns_suffixes",
        "192.168.1.1": "policy.allowed_ip_ranges",
        "x@other.org": "policy.allowed_email_domains",
    }
    for name, rule in cases.items():
        with pytest.raises(PolicyViolation) as refused:
            policy.check_names([parse_name(name)])
        assert refused.value.rule == rule
    with pytest.raises(PolicyViolation, match="at most 3"):
        policy.check_names([parse_name(f"h{i}.example.com") for i in range(4)])
    with pytest.raises(ConfigError):
        NamePolicy.from_config("policy", {"no_such_rule": 1})
    assert ipaddress.ip_address("10.1.2.3") in policy.allowed_ip_ranges[0]


def test_key_policy_types() -> None:
    allowed = BUILTIN_PROFILES["tls-server"].key_types
    assert (
        check_public_key(
            ec.generate_private_key(ec.SECP256R1()).public_key(), allowed_types=allowed
        )
        == "ec-p256"
    )
    with pytest.raises(PolicyViolation) as refused:
        check_public_key(
            ec.generate_private_key(ec.SECP256K1()).public_key(), allowed_types=allowed
        )
    assert refused.value.rule == "key.curve"
    with pytest.raises(PolicyViolation) as refused:
        check_public_key(rsa.generate_private_key(65537, 1024).public_key(), allowed_types=allowed)
    assert refused.value.rule == "key.rsa-size"
    with pytest.raises(PolicyViolation) as refused:
        check_public_key(rsa.generate_private_key(3, 2048).public_key(), allowed_types=allowed)
    assert refused.value.rule == "key.rsa-exponent"


def test_fermat_and_roca_detectors() -> None:
    p, q = 1_000_003, 1_000_033  # close primes: Fermat finds them at once
    assert fermat_factor(p * q) == (p, q)
    assert fermat_factor(1_000_003 * 2_000_029) is None
    # A modulus that is a power of 65537 modulo every ROCA prime is flagged; a random one is not.
    assert is_roca_vulnerable(65537**5)
    assert not is_roca_vulnerable(
        rsa.generate_private_key(65537, 2048).public_key().public_numbers().n
    )


def test_cabf_schedule() -> None:
    assert cabf_max_validity(dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).days == 398
    assert cabf_max_validity(dt.datetime(2026, 11, 28, tzinfo=dt.UTC)).days == 200
    assert cabf_max_validity(dt.datetime(2027, 3, 15, tzinfo=dt.UTC)).days == 100
    assert cabf_max_validity(dt.datetime(2029, 3, 15, tzinfo=dt.UTC)).days == 47


def test_csr_dns_name_must_be_ascii() -> None:
    """A U-label in a CSR's dNSName (IA5String) is malformed, not something to convert quietly."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding

    from vouch.x509.csr import load_csr

    key = ec.generate_private_key(ec.SECP256R1())
    raw = x509.DNSName._init_without_validation("bücher.example")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([raw]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(BadInput, match="not ASCII"):
        load_csr(csr.public_bytes(Encoding.DER))
    # On a command line the same name is fine: it is converted to its A-label.
    assert parse_name("bücher.example").value == "xn--bcher-kva.example"
