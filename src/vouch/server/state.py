"""What a running server holds and the periodic work it does.

Every node keeps revocation data in memory and refreshes it from the store every
``SYNC_INTERVAL`` (so a revocation made anywhere is served within seconds). One node at a time,
holding the cluster lease, does the producing: responders, pre-signed OCSP responses, CRLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.config import CONFIG_NAME
from vouch.durations import parse_duration
from vouch.errors import ConfigError, VouchError
from vouch.server.metrics import Metrics
from vouch.server.ocsp_cache import OcspCache
from vouch.services.tokens import SPENT_KEPT
from vouch.store.records import AuthorityRecord, CRLRecord
from vouch.wiring import Vouch
from vouch.x509.ocsp import INTERNAL_ERROR, TRY_LATER, ParsedRequest

log = logging.getLogger(__name__)
CONFIG_SETTLE = 2.0  # seconds a changed vouch.toml stays unchanged before it is adopted

SYNC_INTERVAL = 2.0
CHECKPOINT_INTERVAL = 1.0  # seconds between background WAL checkpoints (SQLite)
LEASE = "revocation-producer"
MAX_SIGNING = 64  # on-demand OCSP signatures waiting at once; beyond: tryLater
# While this node issued within ISSUING_QUIET seconds, a pre-signing pass signs at most
# FIRST_WHILE_ISSUING first responses for new certificates: pre-signing them as fast as they
# are issued took a fifth of a busy issuer's CPU. Until signed, they are answered on demand;
# revocations and refreshes are never held back.
ISSUING_QUIET = 2.0
FIRST_WHILE_ISSUING = 250


@dataclass
class ServedCRL:
    record: CRLRecord
    ca: str


@dataclass
class ServerState:
    vouch: Vouch
    metrics: Metrics = field(default_factory=Metrics)
    cache: OcspCache = field(default_factory=OcspCache)
    node: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    )
    crls: dict[tuple[str, int], ServedCRL] = field(default_factory=dict)
    ca_certs: dict[str, bytes] = field(default_factory=dict)
    authorities: dict[int, AuthorityRecord] = field(default_factory=dict)
    last_version: int = 0
    # (CA id, serial) -> version of the OCSP rows read within the poll overlap window.
    _recent_versions: dict[tuple[int, str], int] = field(default_factory=dict)
    ready: bool = False
    leader: bool = False
    # Why the last refresh from the store failed (None: it worked); shown by /healthz.
    store_error: str | None = None
    # Periodic work failing now, by job (cleared when the job next succeeds); shown by /healthz:
    # a node that cannot write (a read-only disk) still reads, and says so here.
    job_problems: dict[str, str] = field(default_factory=dict)
    # Set when the server stops: long periodic work ends at its next batch.
    stopping: threading.Event = field(default_factory=threading.Event)
    _keys: dict[int, CertificateIssuerPrivateKeyTypes] = field(default_factory=dict)
    _counted_at: dt.datetime | None = None
    _signing: int = 0
    _signing_lock: threading.Lock = field(default_factory=threading.Lock)
    _db_lock: threading.Lock = field(default_factory=threading.Lock)
    _issued_at: float = -1e9  # time.monotonic() of this node's last issuance
    _held_back: bool = False  # the last pass capped first responses: catch up when quiet
    _config_stamp: tuple[int, int, int] | None = None  # vouch.toml's (mtime_ns, size, inode)

    def note_issuance(self) -> None:
        """This node just issued (REST API or ACME): see ISSUING_QUIET."""
        self._issued_at = time.monotonic()

    def issuing(self) -> bool:
        return time.monotonic() - self._issued_at < ISSUING_QUIET

    # -- every node ----------------------------------------------------------------------------

    def sync(self) -> None:
        """Refresh CAs, CRLs and OCSP responses from the store (blocking; run in a thread)."""
        vouch = self.vouch
        self._watch_config()
        records = vouch.store.list_authorities()
        self.authorities = {r.id: r for r in records}
        self.ca_certs = {r.name: r.certificate for r in records}
        producer = vouch.ocsp_producer
        if {i.record.id for i in producer.issuers()} != {r.id for r in records if r.role != "root"}:
            producer.reload_issuers()
        self.cache.set_issuers({i.record.id: i.sha1 for i in producer.issuers()})
        newest = self.last_version
        changed = vouch.ocsp_store.changes(self.last_version, self._recent_versions)
        for row in changed:
            newest = max(newest, row.version)
        self.cache.load(changed)
        self.cache.prune(vouch.clock.now().timestamp())
        self.last_version = newest
        now = vouch.clock.now()
        for crl in vouch.revocations.latest_crls():
            authority = self.authorities.get(crl.authority_id)
            if authority is None:
                continue
            self.crls[(authority.name, crl.shard)] = ServedCRL(crl, authority.name)
            self.metrics.crl_age.labels(ca=authority.name, shard=str(crl.shard)).set(
                (now - crl.this_update).total_seconds()
            )
            if crl.shard == -1:
                self.metrics.crl_number.labels(ca=authority.name).set(crl.number)
        oldest = self.cache.oldest_produced()
        self.metrics.ocsp_cached.set(len(self.cache))
        self.metrics.ocsp_oldest.set(0 if oldest is None else now.timestamp() - oldest)
        # Counting the whole inventory is a table scan: every 30 s is plenty for a gauge.
        if self._counted_at is None or (now - self._counted_at).total_seconds() >= 30:
            for status, count in vouch.store.status_counts(now).items():
                self.metrics.certificates.labels(status=status).set(count)
            self._counted_at = now
        self.ready = True

    def _watch_config(self) -> None:
        """Provisioners take effect within a sync, with no restart: those added, changed or
        removed in vouch.toml (re-read when the file changes) and those created or removed
        through the API on any node (in the store). Removing one whose key leaked stops its
        tokens at once. Other settings are read at start. A vouch.toml that does not load
        leaves its provisioners as they were and says why in /healthz until it is fixed."""
        try:
            status = (self.vouch.home / CONFIG_NAME).stat()
            stamp: tuple[int, int, int] | None = (
                status.st_mtime_ns,
                status.st_size,
                status.st_ino,
            )
        except OSError:
            stamp = self._config_stamp  # load_config names the problem once it is back
        changed = reloaded = False
        age = time.time() - stamp[0] / 1e9 if stamp is not None else CONFIG_SETTLE
        if (
            stamp != self._config_stamp
            and self._config_stamp is not None
            and 0 <= age < CONFIG_SETTLE
        ):
            # Changed just now: perhaps still being written. A half-written [[provisioners]]
            # entry could read as valid without its limits; it is adopted once it has rested.
            pass
        elif stamp != self._config_stamp:
            try:
                changed = self.vouch.reload_provisioners(read_config=True)
                reloaded = True  # the store's were read with it
                self._job_ok("config")
            except ConfigError as exc:
                self._job_failed(
                    "config", f"{exc.message}; the provisioners it declared are unchanged"
                )
                log.error("%s changed but was not adopted: %s", CONFIG_NAME, exc.message)
            self._config_stamp = stamp  # a store error above: tried again next time
        if not reloaded:
            try:
                changed = self.vouch.reload_provisioners(read_config=False)
            except ConfigError as exc:  # never stops the sync of revocation data
                self._job_failed("provisioners", exc.message)
                log.error("provisioners were not reloaded: %s", exc.message)
                return
        if self.vouch.provisioner_problems:  # a state, not an event: shown, not counted
            self.job_problems["provisioners"] = "; ".join(self.vouch.provisioner_problems)
        else:
            self._job_ok("provisioners")
        if changed:
            names = ", ".join(p.name for p in self.vouch.provisioners.all()) or "none"
            log.info("provisioners now in force: %s", names)

    # -- the lease holder ----------------------------------------------------------------------

    def produce(self) -> None:
        """If this node holds the lease: responders, OCSP pre-signing and due CRLs."""
        vouch = self.vouch
        settings = vouch.config.revocation
        interval = parse_duration(settings.check_interval)
        self.leader = vouch.leases.acquire(
            LEASE, self.node, now=vouch.clock.now(), ttl=max(interval * 6, dt.timedelta(seconds=5))
        )
        self.metrics.leader.set(1 if self.leader else 0)
        if not self.leader:
            return
        producer = vouch.ocsp_producer
        for issuer in producer.issuers():
            record = issuer.record
            if record.status == "revoked" or record.not_after <= vouch.clock.now():
                continue
            key = self._key(record)
            if key is None:
                continue
            try:
                responder = producer.responder(record, ca_key=key)
                if responder is not None:
                    first = FIRST_WHILE_ISSUING if self.issuing() else None
                    self._held_back = first is not None
                    # In batches, so a shutdown does not wait for a whole backlog (after an
                    # incident, or a first start on a large inventory) to be signed.
                    while (
                        not self.stopping.is_set()
                        and producer.presign(issuer, responder, limit=2000, first_limit=first)
                        == 2000
                    ):
                        # Serve what is new meanwhile (this holds the lock sync takes): after an
                        # incident's 10,000 revocations, the new CRL and the first answers.
                        self.sync()
                vouch.crl_producer.produce(record, key, vouch.issuer_urls(record))
                self._job_ok(f"revocation {record.name}")
            except VouchError as exc:
                self._job_failed(f"revocation {record.name}", exc.message, metric="revocation")
                log.error("revocation data for CA %s: %s", record.name, exc.message)
        try:
            # Single-use nonces and responses past nextUpdate would otherwise pile up forever.
            now = vouch.clock.now()
            vouch.acme.store.drop_expired_nonces(now)
            vouch.ocsp_store.drop_expired(now)
            # Spent one-time tokens: once expired, a replay is refused as expired anyway.
            vouch.api_store.drop_expired_redemptions(now - SPENT_KEPT)
            self._job_ok("cleanup")
        except VouchError as exc:
            self._job_failed("cleanup", exc.message)
            log.error("dropping expired nonces, OCSP responses, spent tokens: %s", exc.message)
        try:
            interval = parse_duration(vouch.config.audit.head_interval)
            vouch.audit.sign_head(if_older_than=interval)
            self._job_ok("tree-head")
        except VouchError as exc:
            self._job_failed("tree-head", exc.message)
            log.error("signing a tree head: %s", exc.message)
        root = next((r for r in self.authorities.values() if r.role == "root"), None)
        if root is not None and root.key_ref != "none:":
            key = self._key(root)
            if key is not None:
                try:
                    vouch.crl_producer.produce(root, key, vouch.issuer_urls(root))
                    self._job_ok("root-crl")
                except VouchError as exc:
                    self._job_failed("root-crl", exc.message)
                    log.error("root CRL: %s", exc.message)

    def _job_failed(self, job: str, message: str, *, metric: str | None = None) -> None:
        self.metrics.job_errors.labels(job=metric or job).inc()
        self.job_problems[job] = message

    def _job_ok(self, job: str) -> None:
        self.job_problems.pop(job, None)

    def _key(self, record: AuthorityRecord) -> CertificateIssuerPrivateKeyTypes | None:
        key = self._keys.get(record.id)
        if key is None:
            try:
                key = self.vouch.ca_key(record)
            except VouchError as exc:
                log.warning("CA %s: key not available here: %s", record.name, exc.message)
                return None
            self._keys[record.id] = key
        return key

    # -- OCSP on demand --------------------------------------------------------------------------

    def answer(self, parsed: ParsedRequest) -> bytes:
        """Sign an answer the cache did not have (blocking; run in a thread)."""
        with self._signing_lock:
            if self._signing >= MAX_SIGNING:
                self.metrics.ocsp_try_later.inc()
                return TRY_LATER
            self._signing += 1
        try:
            return self.vouch.ocsp_producer.answer(parsed)
        except VouchError as exc:
            log.warning("OCSP answer failed: %s", exc.message)
            self.metrics.ocsp_try_later.inc()
            return TRY_LATER
        except Exception:
            log.exception("OCSP answer failed")
            return INTERNAL_ERROR
        finally:
            with self._signing_lock:
                self._signing -= 1

    # -- loops -----------------------------------------------------------------------------------

    async def run_sync(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self._locked, self.sync)
                self.store_error = None
            except VouchError as exc:
                self.store_error = exc.message
                self.metrics.job_errors.labels(job="sync").inc()
                log.warning("refreshing from the store failed: %s", exc.message)
            await _sleep(stop, SYNC_INTERVAL)

    async def run_produce(self, stop: asyncio.Event) -> None:
        interval = parse_duration(self.vouch.config.revocation.check_interval).total_seconds()
        while not stop.is_set():
            try:
                await asyncio.to_thread(self._locked, self.produce)
                if self.leader:
                    await asyncio.to_thread(self._locked, self.sync)
                self._job_ok("produce")
            except VouchError as exc:
                self._job_failed("produce", exc.message)
                log.warning("periodic revocation work failed: %s", exc.message)
            await self._until_next_pass(stop, interval)

    async def _until_next_pass(self, stop: asyncio.Event, interval: float) -> None:
        """``interval``, or less: first responses held back while issuing are caught up as
        soon as issuance pauses (ISSUING_QUIET), not up to a whole interval later."""
        deadline = time.monotonic() + interval
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or (self._held_back and not self.issuing()):
                return
            await _sleep(stop, min(left, 0.25))

    def refresh_lifecycle(self, check_keys: bool) -> None:
        """Recompute the lifecycle KPIs served on /metrics (blocking; run in a thread)."""
        vouch = self.vouch
        previous = self.metrics.lifecycle.report
        report = vouch.monitor.report(
            expiry_warning=parse_duration(vouch.config.monitor.expiry_warning),
            # The keys this server already holds: no key file decrypted again for each check.
            key_checks=(lambda: vouch.key_health(lambda r: self._keys.get(r.id)))
            if check_keys
            else None,
        )
        if not check_keys and previous is not None:
            report.keys = previous.keys
        self.metrics.lifecycle.report = report
        service = vouch.incident_service()
        progress = [service.progress(i) for i in service.open_incidents()]
        self.metrics.incident_remaining.clear()  # a finished incident's CA drops out
        self.metrics.incident_replaced.clear()
        for found in progress:
            ca = found.incident.authority
            self.metrics.incident_remaining.labels(ca=ca).set(len(found.remaining))
            self.metrics.incident_replaced.labels(ca=ca).set(found.replaced)

    async def run_checkpoints(self, stop: asyncio.Event) -> None:
        """SQLite: checkpoint the WAL in the background, so that commits need not (see
        ``Database.defer_checkpoints``). Nothing to do on PostgreSQL."""
        db = self.vouch.db
        if db.dialect != "sqlite":
            return
        db.defer_checkpoints()
        while not stop.is_set():
            try:
                await asyncio.to_thread(db.checkpoint)
            except VouchError as exc:
                self._job_failed("checkpoint", exc.message)
                log.warning("checkpointing the database failed: %s", exc.message)
            else:
                self._job_ok("checkpoint")
            await _sleep(stop, CHECKPOINT_INTERVAL)

    async def run_monitor(self, stop: asyncio.Event) -> None:
        # Read-only work outside the store lock: a big inventory must not delay revocation data.
        settings = self.vouch.config.monitor
        interval = parse_duration(settings.interval).total_seconds()
        # Sign-and-verify with every CA key at most this often (monitor.key_check_interval).
        key_interval = parse_duration(settings.key_check_interval).total_seconds()
        keys_checked = -key_interval
        while not stop.is_set():
            check_keys = time.monotonic() - keys_checked >= key_interval
            try:
                await asyncio.to_thread(self.refresh_lifecycle, check_keys)
                if check_keys:
                    keys_checked = time.monotonic()
            except VouchError as exc:
                self.metrics.job_errors.labels(job="monitor").inc()
                log.warning("computing the lifecycle figures failed: %s", exc.message)
            await _sleep(stop, interval)

    def _locked(self, work: object) -> None:
        with self._db_lock:
            work()  # type: ignore[operator]

    def release(self) -> None:
        if self.leader:
            with contextlib.suppress(VouchError):
                self.vouch.leases.release(LEASE, self.node)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
