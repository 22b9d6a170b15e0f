"""The one place that names concrete backends: builds services for a vouch home."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Collection
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)
from sqlalchemy.engine import make_url

from vouch.acme.challenges import ValidationSettings
from vouch.audit.entries import canonical_json
from vouch.clock import Clock, SystemClock
from vouch.config import CONFIG_NAME, VouchConfig, load_config, render_initial_config
from vouch.durations import parse_duration
from vouch.errors import (
    AuthenticationFailed,
    BadInput,
    ConfigError,
    Conflict,
    KeyUnavailable,
    NotFound,
    VouchError,
)
from vouch.fsutil import atomic_write
from vouch.keys.base import KeyRef, PassphraseSource
from vouch.keys.file import FileKeyBackend
from vouch.keys.pkcs11 import PinSource, Pkcs11KeyBackend
from vouch.keys.registry import KeyRegistry
from vouch.services.acme import AcmeService, AcmeSettings
from vouch.services.audit import AuditLog
from vouch.services.authority import (
    Authority,
    Blocklists,
    IssuancePolicy,
    IssuingCA,
    KeyBlocklist,
)
from vouch.services.ca_admin import CAAdmin, CreatedCA, UrlScheme
from vouch.services.crls import CRLProducer, CRLSettings
from vouch.services.ocsp import OcspProducer, OcspSettings
from vouch.services.revocation import Revoker
from vouch.store.acme import AcmeStore
from vouch.store.audit import AuditStore
from vouch.store.engine import Database
from vouch.store.leases import Leases
from vouch.store.ocsp import OcspStore
from vouch.store.records import AuthorityRecord, CertificateRecord, NewEvent
from vouch.store.repository import Store
from vouch.store.revocations import RevocationStore
from vouch.x509.build import IssuerUrls, NameConstraintsSpec
from vouch.x509.keytypes import KeyType
from vouch.x509.lint import LintMode, PkilintLinter
from vouch.x509.policy import NamePolicy
from vouch.x509.profiles import load_profiles

ROOT_KEY_FILE = "root.key.pem"
AUDIT_KEY_FILE = "audit-key.pem"
ROOT_CERT_FILE = "root.pem"
DEFAULT_LINT_ALLOW = ["cabf.internal_domain_name", "cabf.internal_ip_address"]


def store_url(home: Path, config: VouchConfig) -> str:
    url = make_url(config.store.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            return str(url.set(database=str(home / path)))
    return config.store.url


class FileBlocklist:
    """SPKI SHA-256 hashes of compromised keys, one per line (``#`` comments allowed)."""

    def __init__(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the blocked keys file {path}: {exc}") from exc
        self._hashes = frozenset(
            line.split("#", 1)[0].strip().lower() for line in lines if line.split("#", 1)[0].strip()
        )

    def blocked_among(self, spki_sha256s: Collection[str]) -> set[str]:
        return {s for s in spki_sha256s if s in self._hashes}


def pkcs11_pin_source(home: Path, pin_file: str | None) -> PinSource:
    def pin(description: str) -> str:
        if pin_file:
            path = Path(pin_file) if Path(pin_file).is_absolute() else home / pin_file
            try:
                if path.stat().st_mode & 0o077:
                    raise ConfigError(
                        f"PIN file {path} is readable by others", hint=f"chmod 600 {path}"
                    )
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"cannot read the PKCS#11 PIN file {path} ({type(exc).__name__})"
                ) from exc
        value = os.environ.get("VOUCH_PKCS11_PIN")
        if value:
            return value
        raise AuthenticationFailed(
            f"no PIN for {description}", hint="set keys.pkcs11_pin_file or VOUCH_PKCS11_PIN"
        )

    return pin


class Vouch:
    """A vouch home, opened: config, store, keys, and the services built from them."""

    def __init__(
        self,
        home: Path,
        *,
        passphrase: PassphraseSource,
        clock: Clock | None = None,
        config: VouchConfig | None = None,
    ) -> None:
        self.home = home
        self.config = config or load_config(home)
        self.clock: Clock = clock or SystemClock()
        self.passphrase = passphrase
        self.db = Database(
            store_url(home, self.config), synchronous=self.config.store.sqlite_synchronous
        )
        self.db.migrate()
        self.store = Store(self.db)
        self.revocations = RevocationStore(self.db)
        self.ocsp_store = OcspStore(self.db)
        self.leases = Leases(self.db)
        settings = self.config.keys
        self.pkcs11 = Pkcs11KeyBackend(  # loads no library until a pkcs11: key is used
            settings.pkcs11_module,
            pkcs11_pin_source(home, settings.pkcs11_pin_file),
            pool_size=settings.pkcs11_sessions,
        )
        self.keys = KeyRegistry([FileKeyBackend(home, passphrase), self.pkcs11])
        self.urls = UrlScheme(self.config.serve.public_url)
        self.publish_notes: list[str] = []
        self._policy_logged: str | None = None

    def close(self) -> None:
        self.pkcs11.close()
        self.db.dispose()

    @cached_property
    def linter(self) -> PkilintLinter | None:
        if self.config.issuance.lint is LintMode.OFF:
            return None
        return PkilintLinter(allow=self.config.issuance.lint_allow)

    @cached_property
    def profiles(self) -> dict[str, object]:
        return dict(load_profiles(self.config.profiles))

    def issuance_policy(self, ca_name: str) -> IssuancePolicy:
        config = self.config
        name_policies = [NamePolicy.from_config("policy", config.policy)]
        ca_settings = config.cas.get(ca_name)
        if ca_settings is not None and ca_settings.policy:
            name_policies.append(
                NamePolicy.from_config(f"cas.{ca_name}.policy", ca_settings.policy)
            )
        profiles = load_profiles(config.profiles)
        blocklist: KeyBlocklist = self.revocations  # keys blocked by keyCompromise revocations
        if config.issuance.blocked_keys_file:
            path = Path(config.issuance.blocked_keys_file)
            blocklist = Blocklists(
                self.revocations, FileBlocklist(path if path.is_absolute() else self.home / path)
            )
        try:
            oids = tuple(x509.ObjectIdentifier(o) for o in config.issuance.policy_oids)
        except ValueError as exc:
            raise ConfigError(f"issuance.policy_oids: {exc}") from exc
        return IssuancePolicy(
            profiles=profiles,
            name_policies=tuple(name_policies),
            policy_oids=oids,
            lint_mode=config.issuance.lint,
            linter=self.linter,
            blocklist=blocklist,
        )

    def chain_above(self, record: AuthorityRecord) -> tuple[x509.Certificate, ...]:
        """Intermediates above ``record`` up to, not including, the root."""
        chain: list[x509.Certificate] = []
        parent_id = record.parent_id
        while parent_id is not None:
            parent = self.store.authority_by_id(parent_id)
            if parent.role == "root":
                break
            chain.append(x509.load_der_x509_certificate(parent.certificate))
            parent_id = parent.parent_id
        return tuple(chain)

    def issuing_ca(self, name: str | None = None) -> IssuingCA:
        record = self.store.get_authority(name or self.config.issuance.default_ca)
        if record.role == "root":
            raise BadInput(
                f"{record.name} is a root CA; roots sign only intermediates and CRLs",
                hint="issue under an intermediate (vouch ca list)",
            )
        if record.status in ("retired", "revoked"):
            raise Conflict(f"CA {record.name} is {record.status} and issues nothing")
        key = self.keys.load(KeyRef.parse(record.key_ref))
        return IssuingCA(
            record=record,
            certificate=x509.load_der_x509_certificate(record.certificate),
            key=key,
            urls=self.urls.for_issuer(
                record.name, with_ocsp=True, crl_shards=self.config.revocation.crl_shards
            ),
            chain=self.chain_above(record),
        )

    def record_policy(self) -> None:
        """Log the issuance policy in force when it differs from the last one logged, so the
        audit log shows every policy and profile change before anything is issued under it."""
        config = self.config.model_dump(
            mode="json", include={"issuance", "policy", "profiles", "cas", "revocation"}
        )
        digest = hashlib.sha256(canonical_json(config).encode()).hexdigest()
        if self._policy_logged == digest:
            return
        if self.store.latest_event_subject("policy.in-force") != digest:
            self.store.record_event(
                NewEvent("policy.in-force", digest, {"sha256": digest, "config": config}),
                self.clock.now(),
            )
        self._policy_logged = digest

    def authority(self, name: str | None = None) -> Authority:
        self.record_policy()
        ca = self.issuing_ca(name)
        return Authority(
            ca=ca, store=self.store, policy=self.issuance_policy(ca.record.name), clock=self.clock
        )

    def ca_admin(self) -> CAAdmin:
        return CAAdmin(
            store=self.store,
            keys=self.keys,
            clock=self.clock,
            urls=self.urls,
            linter=self.linter,
            lint_mode=self.config.issuance.lint,
        )

    # -- revocation ----------------------------------------------------------------------------

    @cached_property
    def crl_producer(self) -> CRLProducer:
        settings = self.config.revocation
        return CRLProducer(
            revocations=self.revocations,
            clock=self.clock,
            settings=CRLSettings(
                validity=parse_duration(settings.crl_validity),
                root_validity=parse_duration(settings.root_crl_validity),
                shards=settings.crl_shards,
            ),
            linter=self.linter,
            lint_mode=self.config.issuance.lint,
        )

    @cached_property
    def ocsp_producer(self) -> OcspProducer:
        settings = self.config.revocation
        return OcspProducer(
            store=self.store,
            ocsp=self.ocsp_store,
            revocations=self.revocations,
            keys=self.keys,
            clock=self.clock,
            settings=OcspSettings(
                validity=parse_duration(settings.ocsp_validity),
                responder_validity=parse_duration(settings.responder_validity),
                organization=self.config.organization,
                country=self.config.country,
            ),
            linter=self.linter,
            lint_mode=self.config.issuance.lint,
        )

    def issuer_urls(self, record: AuthorityRecord) -> IssuerUrls:
        if record.role == "root":
            return self.urls.for_issuer(record.name, with_ocsp=False)
        return self.urls.for_issuer(
            record.name, with_ocsp=True, crl_shards=self.config.revocation.crl_shards
        )

    def ca_key(
        self, record: AuthorityRecord, root_key_dir: Path | None = None
    ) -> CertificateIssuerPrivateKeyTypes:
        """A CA's signing key: an online CA's from its backend, the root's as ``root_key``."""
        if record.role == "root":
            return self.root_key(root_key_dir)
        return self.keys.load(KeyRef.parse(record.key_ref))

    def revoker(self, *, publish: bool = True) -> Revoker:
        return Revoker(
            store=self.store,
            revocations=self.revocations,
            clock=self.clock,
            after_revoke=self.publish_revocation if publish else None,
        )

    def publish_revocation(self, authority: AuthorityRecord, record: CertificateRecord) -> None:
        """Right after a revocation: the CA's CRLs and the certificate's OCSP response again.

        Best effort: an offline root's CRL waits for its ceremony, and the server's periodic
        check redoes anything that failed here (the CA's revision tells it)."""
        self.publish_notes.clear()
        try:
            key = self.ca_key(authority)
        except VouchError as exc:
            self.publish_notes.append(
                f"the CRL of {authority.name} was not re-signed here: {exc.message}"
                + (
                    " (run `vouch crl --ca root --root-key DIR`)"
                    if authority.role == "root"
                    else ""
                )
            )
            return
        try:
            self.crl_producer.produce(authority, key, self.issuer_urls(authority))
            if authority.role == "root":
                return
            producer = self.ocsp_producer
            issuer = next((i for i in producer.issuers() if i.record.id == authority.id), None)
            responder = producer.responder(authority, ca_key=key)
            if issuer is not None and responder is not None:
                [fresh] = self.revocations.find_issued(record.serial, authority.name)
                producer.refresh_one(issuer, responder, fresh)
        except VouchError as exc:
            self.publish_notes.append(
                f"the revocation is recorded, but publishing it here failed ({exc.message}); "
                "a running `vouch serve` publishes it within seconds"
            )

    # -- audit log -------------------------------------------------------------------------------

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(
            store=AuditStore(self.db),
            clock=self.clock,
            key_loader=self._audit_key,
            public_key=self.audit_public_key,
        )

    def audit_public_key(self) -> PublicKeyTypes:
        path = self.home / AUDIT_KEY_FILE
        try:
            return serialization.load_pem_public_key(path.read_bytes())
        except FileNotFoundError:
            return self._audit_key().public_key()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the audit public key {path}: {exc}") from exc

    def _audit_key(self) -> CertificateIssuerPrivateKeyTypes:
        """The audit key, made on first use (homes from before the audit log get one then)."""
        ref = KeyRef.parse(self.config.audit.key)
        try:
            key = self.keys.load(ref)
        except KeyUnavailable:
            if (
                ref.scheme != "file"
                or FileKeyBackend(self.home, self.passphrase).path_of(ref).exists()
            ):
                raise
            key = self.keys.generate(ref, "ec-p256")
            pem = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            atomic_write(self.home / AUDIT_KEY_FILE, pem)
            self.store.record_event(
                NewEvent("audit.key-created", "audit", {"public_key": pem.decode("ascii")}),
                self.clock.now(),
            )
        return key

    # -- ACME ----------------------------------------------------------------------------------

    @cached_property
    def acme(self) -> AcmeService:
        config = self.config.acme
        return AcmeService(
            store=AcmeStore(self.db),
            certificates=self.store,
            authority=self.authority,
            revoker=self.revoker,
            name_policy=NamePolicy.from_config("policy", self.config.policy),
            clock=self.clock,
            settings=AcmeSettings(
                terms_of_service=config.terms_of_service,
                website=config.website,
                caa_identities=tuple(config.caa_identities),
                profile=config.profile,
            ),
        )

    def acme_validation(self) -> ValidationSettings:
        config = self.config.acme
        resolver_text = os.environ.get("VOUCH_ACME_RESOLVER", config.resolver)
        resolver = None
        if resolver_text:
            host, _, port = resolver_text.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"acme.resolver {resolver_text!r} is not HOST:PORT")
            resolver = (host.strip("[]"), int(port))
        return ValidationSettings(
            resolver=resolver,
            http01_port=int(os.environ.get("VOUCH_ACME_HTTP01_PORT", config.http01_port)),
            tlsalpn01_port=int(os.environ.get("VOUCH_ACME_TLSALPN01_PORT", config.tlsalpn01_port)),
        )

    def root(self) -> AuthorityRecord:
        roots = [a for a in self.store.list_authorities() if a.role == "root"]
        if not roots:
            raise NotFound("this home has no root CA")
        return roots[0]

    def root_key(self, root_key_dir: Path | None) -> CertificateIssuerPrivateKeyTypes:
        """The root's key: from the home, or from an offline root directory (a ceremony)."""
        root = self.root()
        ref = KeyRef.parse(root.key_ref)
        if root_key_dir is not None:
            backend = FileKeyBackend(root_key_dir, self.passphrase)
            key = backend.load(KeyRef("file", ROOT_KEY_FILE))
        elif ref.scheme == "none":
            raise KeyUnavailable(
                "the root key is offline",
                hint="pass --root-key DIR with the offline root directory",
            )
        else:
            key = self.keys.load(ref)
        certificate = x509.load_der_x509_certificate(root.certificate)
        if key.public_key() != certificate.public_key():
            raise BadInput("that key is not this home's root key")
        return key

    def create_intermediate(
        self,
        name: str,
        *,
        key_type: KeyType,
        validity: dt.timedelta,
        root_key_dir: Path | None,
        status: str = "active",
        name_constraints: NameConstraintsSpec | None = None,
    ) -> CreatedCA:
        root = self.root()
        return self.ca_admin().create_intermediate(
            name=name,
            parent=root,
            parent_key=self.root_key(root_key_dir),
            organization=self.config.organization,
            country=self.config.country,
            key_type=key_type,
            validity=validity,
            key_ref=KeyRef("file", f"keys/{name}.key.pem"),
            status=status,
            name_constraints=name_constraints,
        )


def init_home(
    home: Path,
    *,
    passphrase: PassphraseSource,
    organization: str,
    country: str,
    key_type: KeyType,
    root_validity: dt.timedelta,
    intermediate_validity: dt.timedelta,
    offline_root: Path | None,
    public_url: str,
    passphrase_file: str | None = None,
    lint_allow: list[str] | None = None,
    force: bool = False,
    clock: Clock | None = None,
    name_constraints: NameConstraintsSpec | None = None,
    store_url: str = "sqlite:///vouch.db",
) -> Vouch:
    """Create a home: config, database, root and issuing intermediate, encrypted keys (0600)."""
    if (home / CONFIG_NAME).exists():
        # (a PostgreSQL store named by the old config is left alone: drop it with the database's tools)
        if not force:
            raise Conflict(
                f"{home} already holds a vouch home",
                hint="use another --home, or --force to replace it (this destroys its CA keys)",
            )
        for child in ("keys", "vouch.db", "vouch.db-wal", "vouch.db-shm", CONFIG_NAME):
            target = home / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if offline_root is not None:
        offline_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (offline_root / ROOT_KEY_FILE).exists():
            raise Conflict(
                f"{offline_root / ROOT_KEY_FILE} already exists; refusing to overwrite it"
            )
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / "keys").mkdir(exist_ok=True, mode=0o700)
    text = render_initial_config(
        organization=organization,
        country=country,
        public_url=public_url,
        passphrase_file=passphrase_file,
        lint_allow=DEFAULT_LINT_ALLOW if lint_allow is None else lint_allow,
        store_url=store_url,
    )
    atomic_write(home / CONFIG_NAME, text.encode("utf-8"), mode=0o600)
    vouch = Vouch(home, passphrase=passphrase, clock=clock)
    admin = vouch.ca_admin()
    if offline_root is not None:
        root_ref = KeyRef("file", str((offline_root / ROOT_KEY_FILE).resolve()))
        recorded = "none:"
    else:
        root_ref = KeyRef("file", f"keys/{ROOT_KEY_FILE}")
        recorded = None
    created, root_key = admin.create_root(
        name="root",
        organization=organization,
        country=country,
        key_type=key_type,
        validity=root_validity,
        key_ref=root_ref,
        record_key_ref=recorded,
    )
    root_pem = created.certificate.public_bytes(serialization.Encoding.PEM)
    atomic_write(home / ROOT_CERT_FILE, root_pem)
    if offline_root is not None:
        atomic_write(offline_root / ROOT_CERT_FILE, root_pem)
    admin.create_intermediate(
        name="issuing",
        parent=created.record,
        parent_key=root_key,
        organization=organization,
        country=country,
        key_type=key_type,
        validity=intermediate_validity,
        key_ref=KeyRef("file", "keys/issuing.key.pem"),
        name_constraints=name_constraints,
    )
    # The audit key, and a first signed tree head over the CAs' creation.
    vouch.audit.sign_head()
    # The first CRLs, while the root key is at hand (an offline root's next one is a ceremony).
    vouch.crl_producer.produce(created.record, root_key, vouch.issuer_urls(created.record))
    issuing = vouch.store.get_authority("issuing")
    vouch.crl_producer.produce(issuing, vouch.ca_key(issuing), vouch.issuer_urls(issuing))
    return vouch
