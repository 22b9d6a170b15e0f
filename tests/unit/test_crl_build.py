"""build_crl: streamed CRLs, byte for byte what cryptography's builder makes, accepted by openssl
and pkilint."""

from __future__ import annotations

import datetime as dt
import subprocess
import tracemalloc
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import require_tool

from vouch.errors import BadInput
from vouch.x509.crl import CRLSpec, Entry, build_crl
from vouch.x509.lint import LintProfile, PkilintLinter
from vouch.x509.signing import signature_hash_for

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)
REASONS = [
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
]
BR_REASONS = [
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(key: CertificateIssuerPrivateKeyTypes, cn: str = "CRL Test CA") -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=30))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, signature_hash_for(key))  # type: ignore[arg-type]
    )


KEYS: dict[str, CertificateIssuerPrivateKeyTypes] = {
    "p256": ec.generate_private_key(ec.SECP256R1()),
    "p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}
CAS = {kind: _ca(key) for kind, key in KEYS.items()}
P256 = KEYS["p256"]
P256_CA = CAS["p256"]


def _spec(issuer: x509.Certificate = P256_CA, **changes: object) -> CRLSpec:
    fields: dict[str, object] = {
        "issuer": issuer,
        "number": 42,
        "this_update": NOW,
        "next_update": NOW + WEEK,
    }
    fields.update(changes)
    return CRLSpec(**fields)  # type: ignore[arg-type]


def _reference(
    spec: CRLSpec, entries: Sequence[Entry], key: CertificateIssuerPrivateKeyTypes
) -> x509.CertificateRevocationList:
    """The same CRL from cryptography's own builder, given every entry at once."""
    ski = spec.issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(spec.issuer.subject)
        .last_update(spec.this_update.replace(microsecond=0))
        .next_update(spec.next_update.replace(microsecond=0))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(x509.CRLNumber(spec.number), critical=False)
    )
    if spec.distribution_point is not None:
        idp = x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(spec.distribution_point)],
            relative_name=None,
            only_contains_user_certs=spec.only_contains == "user",
            only_contains_ca_certs=spec.only_contains == "ca",
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        builder = builder.add_extension(idp, critical=True)
    for serial, revoked_at, reason, invalidity in entries:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(revoked_at.replace(microsecond=0))
        )
        if reason is not None and reason != "unspecified":
            revoked = revoked.add_extension(
                x509.CRLReason(x509.ReasonFlags(reason)), critical=False
            )
        if invalidity is not None:
            revoked = revoked.add_extension(
                x509.InvalidityDate(invalidity.replace(microsecond=0)), critical=False
            )
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(key, signature_hash_for(key))  # type: ignore[arg-type]


EDGE_ENTRIES: list[Entry] = [
    (1, NOW, "keyCompromise", NOW - dt.timedelta(days=2)),
    (0x7F, NOW, None, None),
    (0x80, NOW, "superseded", None),  # high bit: 0x00 pad
    (0xFF, NOW, "unspecified", None),  # no reasonCode at all
    (2**127, NOW, "cessationOfOperation", NOW),
    (2**159 - 1, NOW, "privilegeWithdrawn", None),  # 20 octets
    (2**158 + 12345, NOW, "affiliationChanged", None),
    (0x1234, dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.UTC), None, None),  # UTCTime
    (0x1235, dt.datetime(2050, 1, 1, tzinfo=dt.UTC), "keyCompromise", None),  # GeneralizedTime
    (0x1236, dt.datetime(1950, 1, 1, tzinfo=dt.UTC), None, dt.datetime(1950, 1, 1, tzinfo=dt.UTC)),
    (0x1237, dt.datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC), None, None),
    (
        0x1238,
        dt.datetime(2100, 6, 1, 1, 2, 3, tzinfo=dt.UTC),
        None,
        dt.datetime(2060, 1, 1, tzinfo=dt.UTC),
    ),
    # Not UTC: converted, as cryptography converts.
    (0x1239, dt.datetime(2026, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=5))), None, None),
    (0x123A, NOW, "certificateHold", None),
]


# -- correctness against cryptography ---------------------------------------------------------


@pytest.mark.parametrize("kind", list(KEYS))
def test_crl_verifies_and_matches_cryptography(kind: str) -> None:
    key, ca = KEYS[kind], CAS[kind]
    spec = _spec(ca)
    der = build_crl(spec, iter(EDGE_ENTRIES), key)  # any iterable: here a one-shot iterator
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    reference = _reference(spec, EDGE_ENTRIES, key)
    assert crl.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert crl.signature_algorithm_oid == reference.signature_algorithm_oid
    if kind in {"rsa2048", "ed25519"}:  # deterministic signatures: the whole DER is the same
        assert der == reference.public_bytes(serialization.Encoding.DER)

    assert crl.issuer == ca.subject
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + WEEK
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)

    assert [r.serial_number for r in crl] == [e[0] for e in EDGE_ENTRIES]
    for revoked, (_, revoked_at, reason, invalidity) in zip(crl, EDGE_ENTRIES, strict=True):
        assert revoked.revocation_date_utc == revoked_at.astimezone(dt.UTC).replace(microsecond=0)
        oids = [e.oid for e in revoked.extensions]
        if reason is None or reason == "unspecified":
            assert x509.CRLReason.oid not in oids
        else:
            ext = revoked.extensions.get_extension_for_class(x509.CRLReason)
            assert not ext.critical
            assert ext.value.reason.value == reason
        if invalidity is None:
            assert x509.InvalidityDate.oid not in oids
        else:
            ext_date = revoked.extensions.get_extension_for_class(x509.InvalidityDate)
            assert not ext_date.critical
            assert ext_date.value.invalidity_date_utc == invalidity
        if not oids:  # no empty crlEntryExtensions
            assert len(revoked.extensions) == 0


def test_empty_crl_has_no_revoked_certificates() -> None:
    spec = _spec()
    der = build_crl(spec, [], P256)
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(P256.public_key())
    assert len(crl) == 0
    assert crl.tbs_certlist_bytes == _reference(spec, [], P256).tbs_certlist_bytes
    # version, signature, issuer, thisUpdate, nextUpdate, [0]: no empty SEQUENCE before [0]
    assert b"\x30\x00\xa0" not in crl.tbs_certlist_bytes


@pytest.mark.parametrize("only", ["user", "ca", None])
def test_shard_crl_carries_a_critical_issuing_distribution_point(only: str | None) -> None:
    url = "http://pki.example.com/crl/issuing/3.crl"
    spec = _spec(distribution_point=url, only_contains=only)
    entries: list[Entry] = [(7, NOW, "keyCompromise", None)]
    crl = x509.load_der_x509_crl(build_crl(spec, entries, P256))
    ext = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert ext.critical
    assert ext.value.full_name == [x509.UniformResourceIdentifier(url)]
    assert ext.value.only_contains_user_certs is (only == "user")
    assert ext.value.only_contains_ca_certs is (only == "ca")
    assert crl.tbs_certlist_bytes == _reference(spec, entries, P256).tbs_certlist_bytes


def test_issuer_without_ski_gets_an_aki_from_its_public_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = (
        x509.CertificateBuilder()
        .subject_name(_name("no SKI"))
        .issuer_name(_name("no SKI"))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + WEEK)
        .sign(key, signature_hash_for(key))  # type: ignore[arg-type]
    )
    crl = x509.load_der_x509_crl(build_crl(_spec(issuer), [], key))
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki == x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    assert crl.is_signature_valid(key.public_key())


def test_times_are_truncated_to_whole_seconds() -> None:
    spec = _spec(this_update=NOW.replace(microsecond=999_999), next_update=NOW + WEEK)
    at = NOW.replace(microsecond=500_000)
    crl = x509.load_der_x509_crl(build_crl(spec, [(5, at, None, at)], P256))
    assert crl.last_update_utc == NOW
    assert crl[0].revocation_date_utc == NOW
    invalidity = crl[0].extensions.get_extension_for_class(x509.InvalidityDate).value
    assert invalidity.invalidity_date_utc == NOW


_zones = st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=-7, minutes=-30))])
_times = st.one_of(
    st.datetimes(dt.datetime(1951, 1, 1), dt.datetime(9998, 12, 31), timezones=_zones),
    # Either side of the UTCTime / GeneralizedTime switch (RFC 5280 5.1.2.6).
    st.datetimes(dt.datetime(2049, 12, 31), dt.datetime(2050, 1, 2), timezones=_zones),
)
_serials = st.one_of(
    st.integers(min_value=1, max_value=2**159 - 1),
    st.integers(min_value=1, max_value=2**64),
    st.sampled_from([0x80, 0xFF, 0x8000, 2**63, 2**127, 2**128 - 1, 2**159 - 1]),
)
_entries = st.lists(
    st.tuples(
        _serials,
        _times,
        st.one_of(st.none(), st.just("unspecified"), st.sampled_from(REASONS)),
        st.one_of(st.none(), _times),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=_entries, number=st.integers(min_value=0, max_value=2**159 - 1))
def test_entry_encodings_match_cryptography(entries: list[Entry], number: int) -> None:
    spec = _spec(number=number)
    crl = x509.load_der_x509_crl(build_crl(spec, entries, P256))
    assert crl.tbs_certlist_bytes == _reference(spec, entries, P256).tbs_certlist_bytes


def test_streaming_holds_no_object_per_entry() -> None:
    count = 20_000

    def entries() -> Iterator[Entry]:
        for i in range(count):
            yield (2**120 + i, NOW, "superseded" if i % 2 else None, NOW if i % 3 == 0 else None)

    build_crl(_spec(), entries(), P256)  # warm up: template key, imports
    tracemalloc.start()
    try:
        der = build_crl(_spec(), entries(), P256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(x509.load_der_x509_crl(der)) == count
    # The buffer, plus the one copy into the bytes returned; an object per entry would be ~10x.
    assert peak < 2.5 * len(der) + 256 * 1024


# -- refusals ---------------------------------------------------------------------------------


def _entries_for(entry: tuple[object, ...]) -> Iterable[Entry]:
    return [entry]  # type: ignore[list-item]


@pytest.mark.parametrize(
    "entry",
    [
        (0, NOW, None, None),
        (-5, NOW, None, None),
        (2**159, NOW, None, None),
        (True, NOW, None, None),
        (5.0, NOW, None, None),
        ("5", NOW, None, None),
        (5, NOW.replace(tzinfo=None), None, None),
        (5, "2026-01-01", None, None),
        (5, NOW, None, NOW.replace(tzinfo=None)),
        (5, NOW, "bogus", None),
        (5, NOW, "KeyCompromise", None),
        (5, NOW, "removeFromCRL", None),  # RFC 5280 5.3.1: delta CRLs only
        (5, NOW, 1, None),
        (5, dt.datetime(1949, 12, 31, 23, 59, 59, tzinfo=dt.UTC), None, None),
        (5, NOW, None, dt.datetime(1949, 12, 31, tzinfo=dt.UTC)),
    ],
)
def test_bad_entries_are_refused(entry: tuple[object, ...]) -> None:
    with pytest.raises(BadInput):
        build_crl(_spec(), _entries_for(entry), P256)


@pytest.mark.parametrize(
    "changes",
    [
        {"this_update": NOW.replace(tzinfo=None)},
        {"next_update": (NOW + WEEK).replace(tzinfo=None)},
        {"next_update": NOW},
        {"next_update": NOW - WEEK},
        {"this_update": NOW.replace(microsecond=1), "next_update": NOW.replace(microsecond=2)},
        {"number": -1},
        {"number": 2**159},
        {"this_update": dt.datetime(1949, 1, 1, tzinfo=dt.UTC)},
    ],
)
def test_bad_specs_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(BadInput):
        build_crl(_spec(P256_CA, **changes), [(5, NOW, None, None)], P256)


# -- openssl ----------------------------------------------------------------------------------


def _leaf(serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = P256_CA.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"leaf {serial}"))
        .issuer_name(P256_CA.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(P256, signature_hash_for(P256))  # type: ignore[arg-type]
    )


def _pem(path: Path, certificate: x509.Certificate) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_openssl_parses_and_enforces_the_crl(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    revoked_leaf = _leaf(0x80 << 120)  # high bit set: exercises the 0x00 pad
    good_leaf = _leaf(0x81 << 120)
    entries: list[Entry] = [
        (0x1111, NOW - dt.timedelta(hours=3), "superseded", None),
        (revoked_leaf.serial_number, NOW - dt.timedelta(hours=1), "keyCompromise", NOW - WEEK),
        (0x2222, NOW - dt.timedelta(hours=2), None, None),
    ]
    der = build_crl(_spec(), entries, P256)
    (tmp_path / "crl.der").write_bytes(der)
    text = subprocess.run(
        [openssl, "crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Key Compromise" in text and "Superseded" in text
    assert "X509v3 CRL Number" in text and "Invalidity Date" in text

    pem = x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "crl.pem").write_bytes(pem)
    _pem(tmp_path / "ca.pem", P256_CA)
    attime = str(int((NOW + dt.timedelta(hours=1)).timestamp()))

    def verify(leaf: x509.Certificate) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                openssl,
                "verify",
                "-x509_strict",
                "-crl_check",
                "-attime",
                attime,
                "-CRLfile",
                "crl.pem",
                "-CAfile",
                "ca.pem",
                str(_pem(tmp_path / "leaf.pem", leaf)),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    refused = verify(revoked_leaf)
    assert refused.returncode != 0
    assert "certificate revoked" in refused.stdout + refused.stderr
    accepted = verify(good_leaf)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


# -- pkilint ----------------------------------------------------------------------------------

LINTER = PkilintLinter()


def test_built_crls_lint_clean() -> None:
    entries: list[Entry] = [
        (i + 1, NOW - dt.timedelta(minutes=i), reason, NOW - WEEK if i % 2 else None)
        for i, reason in enumerate([*BR_REASONS, None, "unspecified"])
    ]
    assert LINTER.lint_crl(build_crl(_spec(), entries, P256)) == []
    assert LINTER.lint_crl(build_crl(_spec(), [], P256)) == []
    shard = _spec(distribution_point="http://pki.example.com/crl/issuing/0.crl")
    assert LINTER.lint_crl(build_crl(shard, entries, P256)) == []
    assert LINTER.lint_crl(build_crl(_spec(), entries, P256), profile=LintProfile.RFC5280) == []


def test_arl_allows_ca_compromise_and_a_longer_validity() -> None:
    spec = _spec(next_update=NOW + dt.timedelta(days=180), only_contains="ca")
    der = build_crl(spec, [(9, NOW, "cACompromise", None)], P256)
    assert LINTER.lint_crl(der, arl=True) == []
    codes = {f.code for f in LINTER.lint_crl(der)}
    assert codes == {"cabf.crl_prohibited_reason_code", "cabf.crl_invalid_validity_period"}


def _broken(*, aki: bool = True, number: bool = True, unspecified: bool = False) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(P256_CA.subject)
        .last_update(NOW)
        .next_update(NOW + WEEK)
    )
    if aki:
        ski = P256_CA.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    if number:
        builder = builder.add_extension(x509.CRLNumber(1), critical=False)
    revoked = x509.RevokedCertificateBuilder().serial_number(77).revocation_date(NOW)
    if unspecified:
        revoked = revoked.add_extension(
            x509.CRLReason(x509.ReasonFlags.unspecified), critical=False
        )
    builder = builder.add_revoked_certificate(revoked.build())
    crl = builder.sign(P256, signature_hash_for(P256))  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("der", "code"),
    [
        (_broken(unspecified=True), "cabf.crl_prohibited_reason_code"),
        (_broken(aki=False), "pkix.authority_key_identifier_missing"),
        (_broken(number=False), "pkix.crl_number_missing"),
        (
            build_crl(_spec(next_update=NOW + dt.timedelta(days=11)), [], P256),
            "cabf.crl_invalid_validity_period",
        ),
    ],
    ids=["unspecified-reason", "no-aki", "no-crl-number", "11-days"],
)
def test_broken_crls_yield_findings(der: bytes, code: str) -> None:
    findings = LINTER.lint_crl(der)
    assert code in {f.code for f in findings}
    assert all(f.severity in {"FATAL", "ERROR", "WARNING"} for f in findings)
    assert PkilintLinter(allow=[f.code for f in findings]).lint_crl(der) == []


def test_rfc5280_profile_warns_of_an_unspecified_reason_code() -> None:
    findings = LINTER.lint_crl(_broken(unspecified=True), profile=LintProfile.RFC5280)
    assert [(f.code, f.severity) for f in findings] == [
        ("pkix.crl_unspecified_crl_entry_reason_code", "WARNING")
    ]
