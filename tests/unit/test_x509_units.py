"""Pure x509 pieces: durations, serials, names, policy, weak keys, profiles."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import require_tool

from vouch.durations import MAX_DURATION, format_duration, parse_duration
from vouch.errors import BadInput, ConfigError, PolicyViolation
from vouch.x509.keypolicy import check_public_key, fermat_factor, is_roca_vulnerable
from vouch.x509.names import parse_name
from vouch.x509.policy import NamePolicy, check_name_constraints
from vouch.x509.profiles import BUILTIN_PROFILES, cabf_max_validity, load_profiles
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
    text = f"{n}{unit}"
    if n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}[unit] > (
        MAX_DURATION.total_seconds()
    ):
        with pytest.raises(BadInput, match="longer than 100 years"):
            parse_duration(text)  # never a date past year 9999 later
        return
    value = parse_duration(text)
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


def test_a_wildcard_reaches_the_names_one_label_below() -> None:
    """``*.example.com`` is good for ``secret.example.com``: a deny list or an excluded subtree
    naming that host refuses the wildcard too; an allow list still needs the whole of it."""
    policy = NamePolicy.from_config("policy", {"denied_dns_suffixes": ["secret.example.com"]})
    with pytest.raises(PolicyViolation, match="denied"):
        policy.check_names([parse_name("*.example.com")])
    policy.check_names([parse_name("*.other.example.com"), parse_name("www.example.com")])
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "constrained")])
    now = dt.datetime.now(dt.UTC)
    issuer = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName("example.com")],
            excluded_subtrees=[x509.DNSName("secret.example.com")]), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    with pytest.raises(PolicyViolation, match="excluded"):
        check_name_constraints([parse_name("*.example.com")], issuer)
    check_name_constraints([parse_name("*.team.example.com")], issuer)


def test_an_ipv4_address_in_ipv6_form_is_refused() -> None:
    policy = NamePolicy.from_config("policy", {"denied_ip_ranges": ["10.0.0.0/8"]})
    with pytest.raises(PolicyViolation, match="IPv4 address in IPv6 form"):
        policy.check_names([parse_name("::ffff:10.0.0.1")])
    policy.check_names([parse_name("2001:db8::1")])


def test_a_dns_limited_policy_limits_email_and_uri_names_too() -> None:
    """Fail closed: a policy with allowed DNS suffixes and no email rule of its own does not let
    any mail domain or URI host through."""
    policy = NamePolicy.from_config("policy", {"allowed_dns_suffixes": ["team.example.com"],
                                               "denied_dns_suffixes": ["x.team.example.com"]})  # fmt: skip
    policy.check_names([parse_name("ops@team.example.com"),
                        parse_name("https://api.team.example.com/v1")])  # fmt: skip
    for outside in ("ceo@bank.example.net", "https://payments.example.net/admin",
                    "spiffe://other.example.net/x", "a@x.team.example.com"):  # fmt: skip
        with pytest.raises(PolicyViolation):
            policy.check_names([parse_name(outside)])
    NamePolicy().check_names([parse_name("any@where.example"), parse_name("urn:x:y")])


def test_a_serverauth_profile_follows_the_cabf_rules() -> None:
    with pytest.raises(ConfigError, match="serverAuth"):
        load_profiles({"web-legacy": {"base": "tls-client", "extended_key_usage": ["serverAuth"]}})
    assert load_profiles({"web": {"base": "tls-server", "max_lifetime": "90d"}})["web"].cabf_server


def test_a_csr_signed_with_sha1_under_pss_is_refused(tmp_path: Path) -> None:
    """SHA-1 is refused where it hides in RSASSA-PSS parameters too (openssl makes such CSRs;
    cryptography refuses to)."""
    from vouch.x509.csr import load_csr

    openssl = require_tool("openssl")
    key = tmp_path / "rsa.key"
    subprocess.run([openssl, "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    for digest, refused in (("sha1", True), ("sha256", False)):
        csr = tmp_path / f"{digest}.csr"
        subprocess.run(
            [openssl, "req", "-new", "-key", str(key), "-subj", "/", "-addext",
             "subjectAltName=DNS:pss.example.org", f"-{digest}", "-sigopt",
             "rsa_padding_mode:pss", "-out", str(csr)],
            check=True, capture_output=True,
        )  # fmt: skip
        if refused:
            with pytest.raises(PolicyViolation, match="sha1"):
                load_csr(csr.read_bytes())
        else:
            assert [n.value for n in load_csr(csr.read_bytes()).names] == ["pss.example.org"]
