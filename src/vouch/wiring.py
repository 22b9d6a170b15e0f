"""The one place that names concrete backends: builds services for a vouch home."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Collection
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)
from sqlalchemy.engine import make_url

from vouch.audit.entries import canonical_json
from vouch.clock import Clock, SystemClock
from vouch.config import (
    CONFIG_NAME,
    KeySettings,
    ProvisionerSettings,
    VouchConfig,
    load_config,
    render_initial_config,
)
from vouch.durations import parse_duration
from vouch.errors import (
    AuthenticationFailed,
    BadInput,
    ConfigError,
    Conflict,
    KeyUnavailable,
    NotFound,
    StoreError,
    VouchError,
)
from vouch.fsutil import atomic_write
from vouch.keys.base import KeyRef, PassphraseSource, new_key_ref
from vouch.keys.file import FileKeyBackend
from vouch.keys.registry import KeyRegistry
from vouch.services.authority import (
    Authority,
    Blocklists,
    IssuancePolicy,
    IssuingCA,
    KeyBlocklist,
)
from vouch.services.ca_admin import CAAdmin, CreatedCA, UrlScheme
from vouch.store.custody import CustodyStore
from vouch.store.engine import Database
from vouch.store.incident import NOT_ISSUING, IncidentStore
from vouch.store.leases import Leases
from vouch.store.ocsp import OcspStore
from vouch.store.records import AuthorityRecord, CertificateRecord, NewEvent
from vouch.store.repository import CertificateQuery, Store
from vouch.store.revocations import RevocationStore
from vouch.x509.build import IssuerUrls, NameConstraintsSpec
from vouch.x509.keypolicy import spki_sha256
from vouch.x509.keytypes import KeyType
from vouch.x509.lint import LintMode, PkilintLinter, ProcessLinter
from vouch.x509.policy import NamePolicy
from vouch.x509.profiles import load_profiles

if TYPE_CHECKING:  # imported where used: one-shot commands need few of them (start-up time)
    from vouch.acme.challenges import ValidationSettings
    from vouch.keys.pkcs11 import PinSource, Pkcs11KeyBackend
    from vouch.services.acme import AcmeService
    from vouch.services.admins import AdminTokens, LoginGuard, Sessions
    from vouch.services.audit import AuditLog
    from vouch.services.ceremony import Ceremony
    from vouch.services.ceremony_import import CeremonyImporter
    from vouch.services.crls import CRLProducer
    from vouch.services.enrollment import Enrollment
    from vouch.services.incident import IncidentService
    from vouch.services.monitor import KeyHealth, Monitor, Thresholds
    from vouch.services.ocsp import OcspProducer
    from vouch.services.provisioners import ApiProvisioners, Provisioners
    from vouch.services.revocation import Revoker
    from vouch.store.api import ApiStore, StoredProvisioner

ROOT_KEY_FILE = "root.key.pem"
AUDIT_KEY_FILE = "audit-key.pem"
ROOT_CERT_FILE = "root.pem"
ACME_EAB_KEY_FILE = "keys/acme-eab.key"
DEFAULT_LINT_ALLOW = ["cabf.internal_domain_name", "cabf.internal_ip_address"]


def store_url(home: Path, config: VouchConfig) -> str:
    url = make_url(config.store.url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            return str(url.set(database=str(home / path)))
    return config.store.url


def _require_sqlite_file(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return
    path = Path(parsed.database)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = None
    except OSError:
        return  # unreadable and the like: the database layer names it
    wal = path.with_name(path.name + "-wal")
    if size == 0 and wal.exists() and wal.stat().st_size > 0:
        return  # its pages are still in the write-ahead log
    if not size:
        raise StoreError(
            f"the database {path} is {'missing' if size is None else 'empty'}: this home's CAs, "
            "certificates and audit log are kept there",
            hint="restore it from a backup (docs/operations.md), or point store.url at it",
        )


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


class _Pkcs11Slot:
    """A home's PKCS#11 backend, built on first use: importing python-pkcs11 is a cost that
    one-shot commands with file keys need not pay. (Holds no reference to the Vouch.)"""

    def __init__(self, home: Path, settings: KeySettings) -> None:
        self._home = home
        self._settings = settings
        self._lock = threading.Lock()
        self.backend: Pkcs11KeyBackend | None = None

    def get(self) -> Pkcs11KeyBackend:
        with self._lock:
            if self.backend is None:
                from vouch.keys.pkcs11 import Pkcs11KeyBackend

                self.backend = Pkcs11KeyBackend(  # loads no library until a pkcs11: key is used
                    self._settings.pkcs11_module,
                    pkcs11_pin_source(self._home, self._settings.pkcs11_pin_file),
                    pool_size=self._settings.pkcs11_sessions,
                )
            return self.backend


class Vouch:
    """A vouch home, opened: config, store, keys, and the services built from them."""

    def __init__(
        self,
        home: Path,
        *,
        passphrase: PassphraseSource,
        clock: Clock | None = None,
        config: VouchConfig | None = None,
        lint_pool: bool = False,
        new_store: bool = False,
    ) -> None:
        """``lint_pool``: lint as a server does, in worker processes as
        ``issuance.lint_workers`` says, else in this process with pkilint's validators built at
        once (for ``vouch serve``; one-shot commands lint in their own process, on demand).
        ``new_store``: the home is being made, so its SQLite database may not exist yet; else
        a missing one is an error, never silently a new, empty CA."""
        self.home = home
        self._lint_pool = lint_pool
        self.config = config or load_config(home)
        self.clock: Clock = clock or SystemClock()
        self.passphrase = passphrase
        url = store_url(home, self.config)
        if not new_store:
            _require_sqlite_file(url)
        self.db = Database(
            url,
            synchronous=self.config.store.sqlite_synchronous,
            pool_size=self.config.serve.worker_threads,
        )
        self.db.migrate()
        self.store = Store(self.db)
        self.custody = CustodyStore(self.db)
        self.incidents = IncidentStore(self.db)
        self.revocations = RevocationStore(self.db)
        self.ocsp_store = OcspStore(self.db)
        self.leases = Leases(self.db)
        self._pkcs11 = _Pkcs11Slot(home, self.config.keys)
        self.keys = KeyRegistry(
            [FileKeyBackend(home, passphrase)], lazy={"pkcs11": self._pkcs11.get}
        )
        self.urls = UrlScheme(self.config.serve.public_url)
        self.publish_notes: list[str] = []
        self._policy_logged: str | None = None
        self._declared_provisioners: list[ProvisionerSettings] = list(self.config.provisioners)
        self._provisioners_lock = threading.Lock()  # a sync and an API change adopt in turn
        self._stored_seen: list[StoredProvisioner] | None = None  # the store's, last built
        self.provisioner_problems: list[str] = []  # stored ones left out, and why

    def close(self) -> None:
        linter = self.__dict__.get("linter")  # only if built
        if isinstance(linter, ProcessLinter):
            linter.close()
        if self._pkcs11.backend is not None:  # only if built
            self._pkcs11.backend.close()
        self.db.dispose()

    @property
    def pkcs11(self) -> Pkcs11KeyBackend:
        return self._pkcs11.get()

    @cached_property
    def linter(self) -> PkilintLinter | ProcessLinter | None:
        settings = self.config.issuance
        if settings.lint is LintMode.OFF:
            return None
        workers = lint_worker_count(settings.lint_workers) if self._lint_pool else 0
        if workers:
            pool = ProcessLinter(workers, allow=settings.lint_allow)
            pool.start()  # workers load pkilint while the server starts
            return pool
        linter = PkilintLinter(allow=settings.lint_allow)
        if self._lint_pool:
            # A server linting in its own process builds the validators while it starts: the
            # first certificate does not wait for them, and they are among what start-up
            # freezes out of the collector's passes (vouch serve: gc.freeze).
            linter.prewarm()
        return linter

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
        return self._above(record)[0]

    def _above(
        self, record: AuthorityRecord
    ) -> tuple[tuple[x509.Certificate, ...], AuthorityRecord | None]:
        """The intermediates above ``record`` (not the root), and the root they end at."""
        chain: list[x509.Certificate] = []
        parent_id = record.parent_id
        while parent_id is not None:
            parent = self.store.authority_by_id(parent_id)
            if parent.role == "root":
                return tuple(chain), parent
            chain.append(x509.load_der_x509_certificate(parent.certificate))
            parent_id = parent.parent_id
        return tuple(chain), None

    def leaf_chains(self, record: AuthorityRecord) -> list[tuple[x509.Certificate, ...]]:
        """The certificates a leaf of ``record`` comes with: first ``record`` and the
        intermediates above it, up to (not including) the root; then, for each valid
        cross-certificate of that root (a root rollover's), the same followed by it, for
        clients that trust only the other root (RFC 8555 7.4.2 alternate chains)."""
        above, root = self._above(record)
        chain = (x509.load_der_x509_certificate(record.certificate), *above)
        if root is None:
            return [chain]
        return [chain] + [(*chain, cross) for cross in self.cross_certificates(root)]

    def cross_certificates(self, root: AuthorityRecord) -> list[x509.Certificate]:
        """The valid certificates another root made for ``root``'s name and key (a root
        rollover's cross-certificates), oldest first."""
        spki = spki_sha256(x509.load_der_x509_certificate(root.certificate).public_key())
        now = self.clock.now()
        crosses = [
            c
            for c in self.store.certificates(
                CertificateQuery(profile="cross-ca", spki_sha256=spki)
            )
            if c.der is not None and c.authority_id != root.id and c.status(now) == "valid"
        ]
        crosses.sort(key=lambda c: (c.not_before, c.serial))
        return [x509.load_der_x509_certificate(c.der or b"") for c in crosses]

    def issuing_ca(self, name: str | None = None) -> IssuingCA:
        record = self.store.get_authority(name or self.config.issuance.default_ca)
        # The default CA rolled over, or any CA declared compromised (vouch incident): issuance
        # goes on under its successor.
        if name is None or self.incidents.compromised(record.id):
            for _ in range(64):
                successor = self.custody.successor(record.id)
                if successor is None or record.status not in NOT_ISSUING:
                    break
                record = self.store.authority_by_id(successor)
            if record.status in NOT_ISSUING and self.incidents.compromised(record.id):
                raise Conflict(
                    f"CA {record.name} is compromised (vouch incident status) and no CA issues "
                    "in its place",
                    hint="prepare one: vouch ca new-intermediate NAME --standby, then "
                    f"vouch incident declare --ca {record.name} --standby NAME",
                )
        if record.role == "root":
            raise BadInput(
                f"{record.name} is a root CA; roots sign only intermediates and CRLs",
                hint="issue under an intermediate (vouch ca list)",
            )
        if record.status in ("retired", "revoked"):
            raise Conflict(f"CA {record.name} is {record.status} and issues nothing")
        if record.status == "standby":
            raise Conflict(
                f"CA {record.name} is a standby: it issues nothing until it takes over",
                hint=f"vouch ca activate {record.name}, or vouch incident declare ... "
                f"--standby {record.name}",
            )
        certificate = x509.load_der_x509_certificate(record.certificate)
        return IssuingCA(
            record=record,
            certificate=certificate,
            key=self._matching_key(record, certificate),
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
            ca=ca,
            store=self.store,
            policy=self.issuance_policy(ca.record.name),
            clock=self.clock,
            follow=self._follow(lambda: self.authority(name)),
        )

    def _follow(
        self, rebuild: Callable[[], Authority]
    ) -> Callable[[AuthorityRecord], Authority | None]:
        """An Authority kept by a caller checks its CA before each batch (one small read): once
        the CA is retired or revoked (a rollover, an incident), issuance stops there at once and
        goes wherever a fresh Authority for the same request would."""

        def follow(record: AuthorityRecord) -> Authority | None:
            if self.incidents.issuing_status(record.id) not in NOT_ISSUING:
                return None
            return rebuild()

        return follow

    def ca_admin(self) -> CAAdmin:
        return CAAdmin(
            store=self.store,
            keys=self.keys,
            clock=self.clock,
            urls=self.urls,
            linter=self.linter,
            lint_mode=self.config.issuance.lint,
            custody=self.custody,
        )

    # -- REST API (docs/api.md) ----------------------------------------------------------------

    def api_audience(self) -> str:
        """What one-time tokens must name as audience: this server's API URL."""
        return self.config.api.audience or self.config.serve.public_url.rstrip("/") + "/api/v1"

    @cached_property
    def provisioners(self) -> Provisioners:
        """Those of vouch.toml, then those created through the API (kept in the store)."""
        rows = self.api_store.provisioners()
        built, self.provisioner_problems = self._build_provisioners(
            self._declared_provisioners, rows
        )
        self._stored_seen = rows
        return built

    def _build_provisioners(
        self, declared: list[ProvisionerSettings], rows: list[StoredProvisioner]
    ) -> tuple[Provisioners, list[str]]:
        from vouch.services.provisioners import combine

        def read(path_text: str) -> bytes:
            path = Path(path_text) if Path(path_text).is_absolute() else self.home / path_text
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cannot read the provisioner public key {path}") from exc

        return combine(declared, read, rows)

    def reload_provisioners(self, *, read_config: bool = True) -> bool:
        """Adopt the provisioners in force now: those ``vouch.toml`` declares (read again unless
        ``read_config`` is false) and those in the store. They are logged in force first;
        False when nothing changed. On any error nothing changes here (the next call tries
        again): a vouch.toml that does not load keeps the entries it declared before."""
        from vouch.config import load_config

        current = self.provisioners
        loaded = list(load_config(self.home).provisioners) if read_config else None
        with self._provisioners_lock:
            # Under the lock: a store-only reload racing a vouch.toml reload must build on
            # what that one adopted, not write back the entries it read before.
            declared = loaded if loaded is not None else self._declared_provisioners
            rows = self.api_store.provisioners()
            if not read_config and rows == self._stored_seen:
                return False  # the usual sync: nothing new in the store
            fresh, problems = self._build_provisioners(declared, rows)
            changed = not fresh.same_as(current)
            if changed:
                fresh.record_in_force(self.store, self.clock)
                current.adopt(fresh)
            # Only now: had anything above failed, the next call would build it all again.
            self._declared_provisioners = declared
            self._stored_seen = rows
            self.provisioner_problems = problems
            return changed

    def api_provisioners(self) -> ApiProvisioners:
        from vouch.services.provisioners import ApiProvisioners

        return ApiProvisioners(
            store=self.api_store,
            clock=self.clock,
            in_force=self.provisioners,
            profiles=load_profiles(self.config.profiles),
            adopt=lambda: self.reload_provisioners(read_config=False),
        )

    @cached_property
    def api_store(self) -> ApiStore:
        from vouch.store.api import ApiStore
        return ApiStore(self.db)

    def admin_tokens(self) -> AdminTokens:
        from vouch.services.admins import AdminTokens
        return AdminTokens(store=self.api_store, clock=self.clock)

    def sessions(self) -> Sessions:
        """Browser sessions (the dashboard), signed with a key every node shares."""
        import secrets

        from vouch.services.admins import Sessions
        from vouch.store.acme import AcmeStore
        store = AcmeStore(self.db)
        return Sessions(
            store=self.api_store,
            clock=self.clock,
            key=lambda: store.secret("dashboard-session", lambda: secrets.token_bytes(32)),
        )

    def login_guard(self) -> LoginGuard:
        from vouch.services.admins import FailureLimiter, LoginGuard
        settings = self.config.api
        limiter = FailureLimiter(
            limit=settings.max_failures,
            window=parse_duration(settings.failure_window),
            clock=self.clock,
        )
        return LoginGuard(limiter=limiter, store=self.api_store, clock=self.clock)

    def enrollment(self) -> Enrollment:
        from vouch.services.enrollment import Enrollment
        def authority_for(name: str | None, extra: tuple[NamePolicy, ...]) -> Authority:
            base = self.authority(name)
            if not extra:
                return base
            policy = self.issuance_policy(base.ca.record.name)
            policy = dataclasses.replace(
                policy, name_policies=(*policy.name_policies, *extra)
            )
            return Authority(
                ca=base.ca,
                store=self.store,
                policy=policy,
                clock=self.clock,
                follow=self._follow(lambda: authority_for(name, extra)),
            )

        self.provisioners.record_in_force(self.store, self.clock)
        return Enrollment(
            provisioners=self.provisioners,
            api_store=self.api_store,
            authority_for=authority_for,
            profiles=load_profiles(self.config.profiles),
            clock=self.clock,
            audience=self.api_audience(),
            default_profile=self.config.issuance.default_profile,
            default_ca=self.config.issuance.default_ca,
        )

    def ceremony_importer(self) -> CeremonyImporter:
        from vouch.services.ceremony_import import CeremonyImporter
        return CeremonyImporter(
            store=self.store, custody=self.custody, keys=self.keys, clock=self.clock
        )

    # -- incidents (docs/incident-runbook.md) --------------------------------------------------

    def incident_service(self) -> IncidentService:
        from vouch.services.incident import IncidentService
        from vouch.services.key_health import check_key
        def keys_check(record: AuthorityRecord) -> None:
            check = check_key(record, self.keys)
            if check.error is not None:
                raise check.error

        def root_crl(root: AuthorityRecord, key: CertificateIssuerPrivateKeyTypes) -> int:
            return self.crl_producer.produce(root, key, self.issuer_urls(root), shards=[-1])[
                0
            ].number

        return IncidentService(
            store=self.store,
            incidents=self.incidents,
            revocations=self.revocations,
            clock=self.clock,
            keys_check=keys_check,
            renew_now=lambda ca: self.acme.renew_now(authority=ca),
            publish=self.publish_ca,
            revoker=self.revoker(publish=False),
            root_crl=root_crl,
            importer=self.ceremony_importer(),
        )

    def publish_ca(self, record: AuthorityRecord) -> list[str]:
        """All of a CA's CRLs and every OCSP response it lacks, now (after a mass revocation);
        returns what could not be done here (a running `vouch serve` catches up)."""
        try:
            key = self.ca_key(record)
            self.crl_producer.produce(
                record, key, self.issuer_urls(record), shards=self.crl_producer.scopes(record)
            )
            producer = self.ocsp_producer
            producer.reload_issuers()
            issuer = next((i for i in producer.issuers() if i.record.id == record.id), None)
            responder = producer.responder(record, ca_key=key)
            if issuer is not None and responder is not None:
                while producer.presign(issuer, responder, limit=2000) == 2000:
                    pass
        except VouchError as exc:
            return [f"publishing the revocations of {record.name} here failed ({exc.message})"]
        return []

    # -- revocation ----------------------------------------------------------------------------

    @cached_property
    def crl_producer(self) -> CRLProducer:
        from vouch.services.crls import CRLProducer, CRLSettings

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
        from vouch.services.ocsp import OcspProducer, OcspSettings

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
            ca_key_for=self.ca_key,
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
        return self._matching_key(record, x509.load_der_x509_certificate(record.certificate))

    def _matching_key(
        self, record: AuthorityRecord, certificate: x509.Certificate
    ) -> CertificateIssuerPrivateKeyTypes:
        """The CA's key, refused if it is not the key of its certificate (a key file restored
        from the wrong backup, say): what it signed would not verify."""
        key = self.keys.load(KeyRef.parse(record.key_ref))
        if key.public_key() != certificate.public_key():
            raise KeyUnavailable(
                f"the key {record.key_ref} is not CA {record.name}'s key (its public key is not "
                "the one in the CA's certificate)",
                hint="restore this CA's key from its backup",
            )
        return key

    def revoker(self, *, publish: bool = True) -> Revoker:
        from vouch.services.revocation import Revoker

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
        from vouch.services.audit import AuditLog
        from vouch.store.audit import AuditStore

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

    # -- monitoring ----------------------------------------------------------------------------

    @cached_property
    def monitor(self) -> Monitor:
        from vouch.services.monitor import Monitor
        from vouch.store.monitor import MonitorStore
        def latest_head_at() -> dt.datetime | None:
            head = self.audit.store.latest_tree_head()
            return None if head is None else head.timestamp

        return Monitor(
            store=MonitorStore(self.db),
            clock=self.clock,
            authorities=self.store.list_authorities,
            latest_crls=self.revocations.latest_crls,
            latest_head_at=latest_head_at,
        )

    def monitor_thresholds(self) -> Thresholds:
        from vouch.services.monitor import Thresholds
        return Thresholds(
            expiry_warning=parse_duration(self.config.monitor.expiry_warning),
            crl_validity=parse_duration(self.config.revocation.crl_validity),
            ocsp_validity=parse_duration(self.config.revocation.ocsp_validity),
            head_interval=parse_duration(self.config.audit.head_interval),
        )

    def key_health(
        self,
        loaded: Callable[[AuthorityRecord], CertificateIssuerPrivateKeyTypes | None] | None = None,
    ) -> list[KeyHealth]:
        """Sign and verify once with every CA key this vouch holds (with ``loaded``: the key
        objects a running server already holds, where it has them)."""
        from vouch.services.key_health import check_key, testable
        from vouch.services.monitor import KeyHealth
        checks = []
        for record in self.store.list_authorities():
            if not testable(record):
                continue
            check = check_key(record, self.keys, loaded(record) if loaded else None)
            message = "" if check.error is None else check.error.message
            checks.append(KeyHealth(record.name, check.ok, message))
        return checks

    # -- ACME ----------------------------------------------------------------------------------

    @cached_property
    def acme(self) -> AcmeService:
        from vouch.acme.caa import CaaChecker
        from vouch.services.acme import AcmeService, AcmeSettings, RateLimit
        from vouch.store.acme import AcmeStore
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
                eab_required=config.eab_required,
                caa_recheck_after=parse_duration(config.caa_recheck_after),
                orders_per_account=RateLimit(
                    config.orders_per_account, parse_duration(config.orders_per_account_window)
                ),
                certificates_per_domain=RateLimit(
                    config.certificates_per_domain,
                    parse_duration(config.certificates_per_domain_window),
                ),
            ),
            caa=(
                CaaChecker(self.acme_validation().resolver, config.caa_identities)
                if config.caa
                else None
            ),
            eab_wrapping_key=self._acme_eab_wrapping_key,
        )

    def _acme_eab_wrapping_key(self) -> bytes:
        """The AES key that seals EAB HMAC keys in the store (made on first use; every node
        sharing the database needs a copy, like the CA key files)."""
        path = self.home / ACME_EAB_KEY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Conflict):  # another process made it first
                atomic_write(path, secrets.token_bytes(32), mode=0o600, overwrite=False)
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the EAB wrapping key {path}: {exc.strerror}") from exc
        if len(data) != 32:
            raise ConfigError(f"the EAB wrapping key {path} is not 32 bytes")
        return data

    def acme_validation(self) -> ValidationSettings:
        from vouch.acme.challenges import ValidationSettings
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
        # After a root rollover (a ceremony), the active root; the first while none is.
        return next((r for r in roots if r.status == "active"), roots[0])

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
        key_backend: str = "file",
    ) -> CreatedCA:
        """``key_backend``: ``file``, ``pkcs11:token=LABEL`` or a full key reference."""
        root = self.root()
        return self.ca_admin().create_intermediate(
            name=name,
            parent=root,
            parent_key=self.root_key(root_key_dir),
            organization=self.config.organization,
            country=self.config.country,
            key_type=key_type,
            validity=validity,
            key_ref=new_key_ref(key_backend, name),
            status=status,
            name_constraints=name_constraints,
        )

    def rollover_intermediate(
        self,
        name: str,
        *,
        new_name: str,
        key_type: KeyType,
        validity: dt.timedelta,
        root_key_dir: Path | None,
        key_backend: str = "file",
    ) -> CreatedCA:
        old = self.store.get_authority(name)
        parent = self.store.authority_by_id(old.parent_id) if old.parent_id else self.root()
        return self.ca_admin().rollover(
            name,
            new_name=new_name,
            parent_key=self.ca_key(parent, root_key_dir),
            key_type=key_type,
            validity=validity,
            key_ref=new_key_ref(key_backend, new_name),
            organization=self.config.organization,
            country=self.config.country,
        )


def lint_worker_count(configured: int | None) -> int:
    """Lint worker processes for a server: as configured, else one core left to the server's
    own process and at most two for linting (0: lint in the server process)."""
    if configured is not None:
        return configured
    # The cores this process may run on (taskset, cgroup cpusets), not the machine's: workers
    # sharing the server's only core would add their overhead and take nothing off it.
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(0, min(2, cores - 1))


def open_ceremony(
    directory: Path,
    *,
    passphrase: PassphraseSource,
    operators: list[str],
    host: str,
    pkcs11_module: str | None = None,
    pkcs11_pin_file: str | None = None,
    clock: Clock | None = None,
) -> tuple[Ceremony, Pkcs11KeyBackend]:
    """A ceremony on the offline machine: the directory's key file, or keys in an HSM (PIN from
    ``pkcs11_pin_file`` or VOUCH_PKCS11_PIN); close the returned backend when done."""
    from vouch.keys.pkcs11 import Pkcs11KeyBackend
    from vouch.services.ceremony import Ceremony, CeremonyDirectory

    pkcs11 = Pkcs11KeyBackend(pkcs11_module, pkcs11_pin_source(directory, pkcs11_pin_file))
    ceremony = Ceremony(
        directory=CeremonyDirectory(directory),
        keys=KeyRegistry([FileKeyBackend(directory, passphrase), pkcs11]),
        clock=clock or SystemClock(),
        operators=operators,
        host=host,
        linter=PkilintLinter(allow=[]),
        lint_mode=LintMode.BLOCK,
    )
    return ceremony, pkcs11


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
    key_backend: str = "file",
    pkcs11_module: str | None = None,
    pkcs11_pin_file: str | None = None,
) -> Vouch:
    """Create a home: config, database, root and issuing intermediate, their keys in
    ``key_backend`` (``file``: encrypted files, 0600; ``pkcs11:token=LABEL``: objects ``root`` and
    ``issuing`` made in the token). A failure leaves no half-made home behind."""
    root_ref = new_key_ref(key_backend, "root")
    issuing_ref = new_key_ref(key_backend, "issuing")
    if root_ref == issuing_ref or (
        root_ref.scheme == "file" and key_backend.strip() not in ("file", "file:")
    ):
        raise BadInput(
            "vouch init makes two keys (root and issuing): give the backend, not one key",
            hint="--key-backend file, or --key-backend pkcs11:token=LABEL",
        )
    if offline_root is not None and (offline_root / ROOT_KEY_FILE).exists():
        raise Conflict(f"{offline_root / ROOT_KEY_FILE} already exists; refusing to overwrite it")
    replaced: Path | None = None
    if (home / CONFIG_NAME).exists():
        # (a PostgreSQL store named by the old config is left alone: drop it with the database's tools)
        if not force:
            raise Conflict(
                f"{home} already holds a vouch home",
                hint="use another --home, or --force to replace it (this destroys its CA keys)",
            )
        # Moved aside, not deleted, until the new home is made: an init that fails (a short
        # passphrase, a full disk) puts the old home back as it was.
        replaced = home / f".vouch-replaced-{os.getpid()}"
        replaced.mkdir(mode=0o700)
        for child in _HOME_FILES:
            if (home / child).exists() or (home / child).is_symlink():
                (home / child).rename(replaced / child)
    if offline_root is not None:
        offline_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        made = _init_home(
            home,
            passphrase=passphrase,
            organization=organization,
            country=country,
            key_type=key_type,
            root_validity=root_validity,
            intermediate_validity=intermediate_validity,
            offline_root=offline_root,
            public_url=public_url,
            passphrase_file=passphrase_file,
            lint_allow=lint_allow,
            clock=clock,
            name_constraints=name_constraints,
            store_url=store_url,
            root_ref=root_ref,
            issuing_ref=issuing_ref,
            pkcs11_module=pkcs11_module,
            pkcs11_pin_file=pkcs11_pin_file,
        )
    except BaseException:
        for child in _HOME_FILES:
            target = home / child
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
        if replaced is not None:
            for child in _HOME_FILES:
                if (replaced / child).exists() or (replaced / child).is_symlink():
                    (replaced / child).rename(home / child)
            shutil.rmtree(replaced, ignore_errors=True)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return made


# What a home holds that init makes (and --force replaces).
_HOME_FILES = (
    "keys", "provisioners", "vouch.db", "vouch.db-wal", "vouch.db-shm", CONFIG_NAME,
    ROOT_CERT_FILE, AUDIT_KEY_FILE,
)  # fmt: skip


def _check_token(backend: Pkcs11KeyBackend, refs: list[KeyRef]) -> None:
    """Before any key is made: the token answers, the PIN works, the key labels are free."""
    from vouch.keys.pkcs11 import Pkcs11Ref

    for ref in map(Pkcs11Ref.parse, refs):
        if ref.label in {info.label for info in backend.list_keys(ref.token)}:
            raise Conflict(
                f"PKCS#11 token {ref.token!r} already holds a key labelled {ref.label!r}",
                hint="vouch never replaces a key: use another token, or delete that object",
            )


def _init_home(
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
    passphrase_file: str | None,
    lint_allow: list[str] | None,
    clock: Clock | None,
    name_constraints: NameConstraintsSpec | None,
    store_url: str,
    root_ref: KeyRef,
    issuing_ref: KeyRef,
    pkcs11_module: str | None,
    pkcs11_pin_file: str | None,
) -> Vouch:
    (home / "keys").mkdir(exist_ok=True, mode=0o700)
    text = render_initial_config(
        organization=organization,
        country=country,
        public_url=public_url,
        passphrase_file=passphrase_file,
        lint_allow=DEFAULT_LINT_ALLOW if lint_allow is None else lint_allow,
        store_url=store_url,
        pkcs11_module=pkcs11_module,
        pkcs11_pin_file=pkcs11_pin_file,
    )
    atomic_write(home / CONFIG_NAME, text.encode("utf-8"), mode=0o600)
    vouch = Vouch(home, passphrase=passphrase, clock=clock, new_store=True)
    try:
        return _make_cas(
            vouch,
            organization=organization,
            country=country,
            key_type=key_type,
            root_validity=root_validity,
            intermediate_validity=intermediate_validity,
            offline_root=offline_root,
            name_constraints=name_constraints,
            root_ref=root_ref,
            issuing_ref=issuing_ref,
        )
    except BaseException:
        vouch.close()
        raise


def _make_cas(
    vouch: Vouch,
    *,
    organization: str,
    country: str,
    key_type: KeyType,
    root_validity: dt.timedelta,
    intermediate_validity: dt.timedelta,
    offline_root: Path | None,
    name_constraints: NameConstraintsSpec | None,
    root_ref: KeyRef,
    issuing_ref: KeyRef,
) -> Vouch:
    home = vouch.home
    new_refs = [r for r in (root_ref, issuing_ref) if r.scheme == "pkcs11"]
    if offline_root is not None:
        new_refs = [r for r in new_refs if r is not root_ref]
    if new_refs:  # (file keys: python-pkcs11 stays unloaded)
        _check_token(vouch.pkcs11, new_refs)
    admin = vouch.ca_admin()
    if offline_root is not None:
        root_ref = KeyRef("file", str((offline_root / ROOT_KEY_FILE).resolve()))
        recorded = "none:"
    else:
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
        key_ref=issuing_ref,
        name_constraints=name_constraints,
    )
    # The audit key, and a first signed tree head over the CAs' creation.
    vouch.audit.sign_head()
    # The first CRLs, while the root key is at hand (an offline root's next one is a ceremony).
    vouch.crl_producer.produce(created.record, root_key, vouch.issuer_urls(created.record))
    issuing = vouch.store.get_authority("issuing")
    vouch.crl_producer.produce(issuing, vouch.ca_key(issuing), vouch.issuer_urls(issuing))
    return vouch
