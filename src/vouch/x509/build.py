"""Build certificates from validated requests: leaves from a profile, and the CA certificates.

Builders only; signing is the caller's (``Authority``) business, because vouch records what it is
about to sign before it signs it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    CertificatePoliciesOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)

from vouch.x509.names import SubjectName
from vouch.x509.profiles import Profile

MAX_CN_LENGTH = 64  # RFC 5280 ub-common-name


@dataclass(frozen=True)
class IssuerUrls:
    """Where relying parties find the issuer's certificate and revocation status."""

    ca_issuers: str
    crl: str
    ocsp: str | None = None
    # N > 0: leaves name one of N partitioned CRLs, chosen by serial.
    crl_shards: int = 0

    def shard_of(self, serial: int) -> int | None:
        return serial % self.crl_shards if self.crl_shards else None

    def crl_url(self, shard: int | None) -> str:
        """The full CRL's URL, or a shard's: ``.../NAME.crl`` becomes ``.../NAME/SHARD.crl``."""
        if shard is None:
            return self.crl
        return f"{self.crl.removesuffix('.crl')}/{shard}.crl"


@dataclass(frozen=True)
class NameConstraintsSpec:
    permitted_dns: tuple[str, ...] = ()
    excluded_dns: tuple[str, ...] = ()
    permitted_ip: tuple[str, ...] = ()
    excluded_ip: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (
            self.permitted_dns or self.excluded_dns or self.permitted_ip or self.excluded_ip
        )

    def to_extension(self, subject: x509.Name) -> x509.NameConstraints:
        """Constraints that also bound the name types not configured, as a technically
        constrained TLS CA needs (CA/B BR 7.1.2.10.8): no IP addresses unless some are
        permitted, and subject DNs only under the CA's own organization."""
        permitted: list[x509.GeneralName] = [x509.DNSName(d) for d in self.permitted_dns]
        permitted += [
            x509.IPAddress(ipaddress.ip_network(i, strict=False)) for i in self.permitted_ip
        ]
        permitted.append(x509.DirectoryName(_organization_dn(subject)))
        excluded: list[x509.GeneralName] = [x509.DNSName(d) for d in self.excluded_dns]
        excluded += [
            x509.IPAddress(ipaddress.ip_network(i, strict=False)) for i in self.excluded_ip
        ]
        if not self.permitted_ip:
            excluded += [
                x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                x509.IPAddress(ipaddress.ip_network("::/0")),
            ]
        return x509.NameConstraints(
            permitted_subtrees=permitted, excluded_subtrees=excluded or None
        )


@dataclass(frozen=True)
class LeafSpec:
    """Everything a leaf certificate is made of, decided and checked before building."""

    public_key: CertificatePublicKeyTypes
    names: tuple[SubjectName, ...]
    common_name: str | None
    profile: Profile
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    policy_oids: tuple[ObjectIdentifier, ...] = ()


def _key_usage(usages: frozenset[str]) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature="digital_signature" in usages,
        content_commitment="content_commitment" in usages,
        key_encipherment="key_encipherment" in usages,
        data_encipherment=False,
        key_agreement="key_agreement" in usages,
        key_cert_sign="key_cert_sign" in usages,
        crl_sign="crl_sign" in usages,
        encipher_only=False,
        decipher_only=False,
    )


def _policies(oids: Sequence[ObjectIdentifier]) -> x509.CertificatePolicies:
    unique = list(dict.fromkeys(oids))
    return x509.CertificatePolicies([x509.PolicyInformation(oid, None) for oid in unique])


def _aia(urls: IssuerUrls) -> x509.AuthorityInformationAccess:
    descriptions = []
    if urls.ocsp:
        descriptions.append(
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(urls.ocsp)
            )
        )
    descriptions.append(
        x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS,
            x509.UniformResourceIdentifier(urls.ca_issuers),
        )
    )
    return x509.AuthorityInformationAccess(descriptions)


def _cdp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
    )


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def _constrained_directory(issuer: x509.Certificate) -> x509.Name | None:
    try:
        nc = issuer.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    for subtree in nc.permitted_subtrees or ():
        if isinstance(subtree, x509.DirectoryName):
            return subtree.value
    return None


def _leaf_subject(spec: LeafSpec, directory: x509.Name | None) -> x509.Name:
    if not spec.common_name or len(spec.common_name) > MAX_CN_LENGTH:
        return x509.Name([])
    cn = x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)
    if directory is None:
        return x509.Name([cn])
    if spec.profile.cabf_server:
        # A DV certificate may not carry the organization the constraint would demand.
        return x509.Name([])
    # Under a directoryName constraint a non-empty subject must sit inside the permitted DN.
    return x509.Name([*directory, cn])


class LeafFactory:
    """Builds leaves under one issuer. What every leaf shares (issuer name, AKI, AIA, CRL
    distribution point, per-profile key usage and policies) is made once, not per certificate."""

    def __init__(self, issuer: x509.Certificate, urls: IssuerUrls) -> None:
        self._issuer_name = issuer.subject
        self._directory = _constrained_directory(issuer)
        self._urls = urls
        self._shared = (
            x509.Extension(x509.AuthorityKeyIdentifier.oid, False, _aki(issuer)),
            x509.Extension(x509.AuthorityInformationAccess.oid, False, _aia(urls)),
        )
        self._cdps: dict[int | None, x509.Extension[x509.ExtensionType]] = {}
        self._basic = x509.Extension(
            x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=False, path_length=None)
        )
        self._by_profile: dict[tuple[str, bool, tuple[ObjectIdentifier, ...]], _ProfileParts] = {}

    def builder(self, spec: LeafSpec) -> x509.CertificateBuilder:
        profile = spec.profile
        is_rsa = isinstance(spec.public_key, rsa.RSAPublicKey)
        parts = self._parts(profile, is_rsa, spec.policy_oids)
        subject = _leaf_subject(spec, self._directory)
        extensions = [self._basic, parts.key_usage]
        if parts.extended_key_usage is not None:
            extensions.append(parts.extended_key_usage)
        extensions.append(
            x509.Extension(
                x509.SubjectAlternativeName.oid,
                # RFC 5280 4.2.1.6: critical when the subject is empty.
                len(subject) == 0,
                x509.SubjectAlternativeName([n.to_general_name() for n in spec.names]),
            )
        )
        if not profile.cabf_server:
            # CA/B BR 7.1.2.7.6 makes the SKI "NOT RECOMMENDED" in TLS subscriber certificates
            # (and its linter warns); RFC 5280 4.2.1.2 asks for it elsewhere.
            ski = x509.SubjectKeyIdentifier.from_public_key(spec.public_key)
            extensions.append(x509.Extension(x509.SubjectKeyIdentifier.oid, False, ski))
        extensions.extend(self._shared)
        extensions.append(self._cdp(self._urls.shard_of(spec.serial)))
        if parts.policies is not None:
            extensions.append(parts.policies)
        # The constructor takes the extensions as a list: no per-extension builder copies.
        return x509.CertificateBuilder(
            issuer_name=self._issuer_name,
            subject_name=subject,
            public_key=spec.public_key,
            serial_number=spec.serial,
            not_valid_before=spec.not_before,
            not_valid_after=spec.not_after,
            extensions=extensions,
        )

    def _cdp(self, shard: int | None) -> x509.Extension[x509.ExtensionType]:
        cdp = self._cdps.get(shard)
        if cdp is None:
            cdp = self._cdps[shard] = x509.Extension(
                x509.CRLDistributionPoints.oid, False, _cdp(self._urls.crl_url(shard))
            )
        return cdp

    def _parts(
        self, profile: Profile, is_rsa: bool, policy_oids: tuple[ObjectIdentifier, ...]
    ) -> _ProfileParts:
        key = (profile.name, is_rsa, policy_oids)
        parts = self._by_profile.get(key)
        if parts is None or parts.profile is not profile:
            usages = set(profile.key_usage)
            if is_rsa and profile.rsa_key_encipherment:
                usages.add("key_encipherment")
            eku = (
                x509.Extension(
                    x509.ExtendedKeyUsage.oid,
                    False,
                    x509.ExtendedKeyUsage(list(profile.extended_key_usage)),
                )
                if profile.extended_key_usage
                else None
            )
            oids = [*profile.policy_oids, *policy_oids]
            policies = (
                x509.Extension(x509.CertificatePolicies.oid, False, _policies(oids))
                if oids
                else None
            )
            parts = _ProfileParts(
                profile=profile,
                key_usage=x509.Extension(x509.KeyUsage.oid, True, _key_usage(frozenset(usages))),
                extended_key_usage=eku,
                policies=policies,
            )
            self._by_profile[key] = parts
        return parts


@dataclass(frozen=True)
class _ProfileParts:
    profile: Profile
    key_usage: x509.Extension[x509.ExtensionType]
    extended_key_usage: x509.Extension[x509.ExtensionType] | None
    policies: x509.Extension[x509.ExtensionType] | None


def leaf_builder(
    spec: LeafSpec, issuer: x509.Certificate, urls: IssuerUrls
) -> x509.CertificateBuilder:
    return LeafFactory(issuer, urls).builder(spec)


def ca_subject(organization: str, common_name: str, country: str) -> x509.Name:
    """A CA's subject: C, O and CN, as CA/B BR 7.1.2.10.2 asks of CA certificates."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country.upper()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:MAX_CN_LENGTH]),
        ]
    )


def _organization_dn(subject: x509.Name) -> x509.Name:
    keep = (NameOID.COUNTRY_NAME, NameOID.ORGANIZATION_NAME)
    return x509.Name([a for a in subject if a.oid in keep])


def root_builder(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """A self-signed root: CA/B BR 7.1.2.1 (no EKU, no policies, no path length)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(frozenset({"key_cert_sign", "crl_sign"})), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        # BR 7.1.2.1.3: a root's AKI, when present, names its own key.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                x509.SubjectKeyIdentifier.from_public_key(public_key)
            ),
            critical=False,
        )
    )


def intermediate_builder(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate,
    urls: IssuerUrls,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    name_constraints: NameConstraintsSpec | None = None,
) -> x509.CertificateBuilder:
    """An issuing CA for TLS (CA/B BR 7.1.2.10): serverAuth and clientAuth, path length 0.

    The CA is affiliated with the root's operator, so it carries anyPolicy (BR 7.1.2.10.5) and
    leaves may carry whatever policy identifiers the configuration names.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(frozenset({"digital_signature", "key_cert_sign", "crl_sign"})), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(issuer), critical=False)
        .add_extension(_aia(IssuerUrls(ca_issuers=urls.ca_issuers, crl=urls.crl)), critical=False)
        .add_extension(_cdp(urls.crl), critical=False)
        .add_extension(_policies([CertificatePoliciesOID.ANY_POLICY]), critical=False)
    )
    if name_constraints is not None and not name_constraints.is_empty():
        builder = builder.add_extension(name_constraints.to_extension(subject), critical=True)
    return builder


def responder_builder(
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer: x509.Certificate,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    """A delegated OCSP responder (RFC 6960 4.2.2.2, CA/B BR 7.1.2.8): id-kp-OCSPSigning and
    id-pkix-ocsp-nocheck, short-lived, so that clients need not check its own status."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(frozenset({"digital_signature"})), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(issuer), critical=False)
    )
