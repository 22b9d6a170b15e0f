"""The renewal loop: check every certificate, renew those that are due, install, reload.

``run_once`` is one pass (for cron and systemd timers); ``run_forever`` sleeps until the next
certificate is due (or the CA's renewal information should be asked again) and repeats.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import shlex
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vouch.agent import files
from vouch.agent.acme_client import AcmeCa
from vouch.agent.api_client import ApiCa
from vouch.agent.challenges import Http01Responder, StandaloneResponder, WebrootResponder
from vouch.agent.config import AgentConfig, CertificateSpec, listen_address
from vouch.agent.schedule import Plan, ari_time, next_ari_check, planned_renewal, retry_delay
from vouch.agent.status import AgentStatus, CertificateStatus, iso, write_status
from vouch.clock import Clock, SystemClock
from vouch.errors import BadInput, Unavailable, VouchError
from vouch.x509.keytypes import generate_private_key, key_type_of

log = logging.getLogger("vouch.agent")

# The loop wakes at least this often, to notice files changed by hand.
MAX_SLEEP = dt.timedelta(hours=1)
RELOAD_TIMEOUT = 120


@dataclass
class Tracked:
    """What the agent knows of one certificate between passes."""

    spec: CertificateSpec
    installed: files.Installed | None = None
    plan: Plan | None = None
    failures: int = 0
    retry_at: dt.datetime | None = None
    last_error: str | None = None
    last_renewed: dt.datetime | None = None
    renewals: int = 0
    ari_suggested: dt.datetime | None = None
    ari_next: dt.datetime | None = None
    unreadable: str | None = None  # why the installed file cannot be used
    # New files the service has not loaded yet (mirrors the state directory's reload marker).
    reload_pending: bool = False
    reload_failures: int = 0
    reload_retry_at: dt.datetime | None = None
    reload_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def due_at(self) -> dt.datetime:
        assert self.plan is not None
        if self.retry_at is not None and self.retry_at > self.plan.at:
            return self.retry_at
        return self.plan.at


@dataclass(frozen=True)
class PassResult:
    renewed: list[str]
    failed: list[str]


def _names_of(leaf: x509.Certificate) -> set[str]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return dns | {str(a) for a in san.get_values_for_type(x509.IPAddress)}


def _serial(leaf: x509.Certificate) -> str:
    text = f"{leaf.serial_number:X}"
    return text.zfill(len(text) + len(text) % 2)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        ca: AcmeCa | None = None,
        run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        # Exactly one of the two (checked by the config): an ACME CA, or vouch's REST API.
        self.ca = ca or (AcmeCa(config.acme) if config.acme is not None else None)
        self.api = ApiCa(config.api) if config.api is not None else None
        self.source = config.api.url if config.api is not None else ""
        if config.acme is not None:
            self.source = config.acme.directory
        self.tracked = [Tracked(spec) for spec in config.certificate]
        self._run = run or _run_reload
        self.state_dir = config.agent.state_dir
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise Unavailable(f"cannot create the agent state directory {self.state_dir}") from exc
        for item in self.tracked:
            if files.recover(item.spec, self.state_dir):
                log.warning(
                    "%s: finished an interrupted install of its key and chain", item.spec.name
                )
            # Reloaded at the first pass: files rolled forward just now, or installed before a
            # reload that failed or never ran.
            item.reload_pending = files.reload_pending(item.spec, self.state_dir)
        self._renewal_info: bool | None = None

    # -- checking ----------------------------------------------------------------------------------

    def _responder(self) -> Http01Responder:
        challenge = self.config.challenge
        assert challenge is not None  # ACME mode
        if challenge.webroot is not None:
            return WebrootResponder(challenge.webroot)
        assert challenge.listen is not None
        return StandaloneResponder(*listen_address(challenge.listen))

    def _uses_renewal_info(self) -> bool:
        if self.ca is None:
            return False  # API mode: renewal by lifetime
        if self._renewal_info is None:
            try:
                self._renewal_info = self.ca.has_renewal_info()
            except VouchError as exc:
                log.warning("cannot read the ACME directory: %s", exc.message)
                return False
            if not self._renewal_info:
                log.info("the CA publishes no renewal information (RFC 9773); renewing by lifetime")
        return self._renewal_info

    def _assess(self, item: Tracked) -> None:
        """Read what is installed and decide when it must be renewed and why."""
        spec, now = item.spec, self.clock.now()
        previous = item.installed
        item.unreadable = None
        try:
            item.installed = files.read_installed(spec)
        except VouchError as exc:
            # Not overwritten blindly: the file may be someone else's. Reported as a failure.
            item.installed, item.unreadable = None, exc.message
            item.plan = Plan(now, "the installed certificate cannot be read")
            return
        installed = item.installed
        if previous is not None and (
            installed is None or installed.leaf.serial_number != previous.leaf.serial_number
        ):
            item.ari_next = item.ari_suggested = None
        if installed is None:
            item.plan = Plan(now, "no certificate is installed yet")
            return
        leaf = installed.leaf
        if not installed.key_matches:
            item.plan = Plan(now, "the installed key does not match the certificate")
        elif _names_of(leaf) != set(spec.names):
            item.plan = Plan(now, "the configured names differ from the certificate's")
        elif key_type_of(leaf.public_key()) != spec.key_type:
            item.plan = Plan(now, f"the configured key type is {spec.key_type}")
        else:
            self._ask_renewal_info(item, now)
            item.plan = planned_renewal(
                leaf.not_valid_before_utc,
                leaf.not_valid_after_utc,
                renew_at=self.config.agent.renew_at,
                suggested=item.ari_suggested,
            )

    def _ask_renewal_info(self, item: Tracked, now: dt.datetime) -> None:
        assert item.installed is not None
        leaf = item.installed.leaf
        if leaf.not_valid_after_utc <= now or (item.ari_next is not None and now < item.ari_next):
            return
        if self.ca is None or not self._uses_renewal_info():
            return
        not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        try:
            window = self.ca.renewal_info(leaf)
        except VouchError as exc:
            log.warning("%s: %s; renewing by lifetime meanwhile", item.spec.name, exc.message)
            item.ari_next = next_ari_check(
                now + dt.timedelta(hours=1), now=now, not_before=not_before, not_after=not_after
            )
            return
        if window is None:
            return
        item.ari_suggested = ari_time(
            window.start, window.end, lifetime=not_after - not_before, rng=self.rng
        )
        item.ari_next = next_ari_check(
            now + window.retry_after, now=now, not_before=not_before, not_after=not_after
        )

    def check(self) -> None:
        with ThreadPoolExecutor(self.config.agent.concurrency) as pool:
            list(pool.map(self._assess, self.tracked))

    # -- renewing ----------------------------------------------------------------------------------

    def _renew(self, item: Tracked, responder: Http01Responder | None) -> bool:
        spec = item.spec
        assert item.plan is not None
        reason = item.plan.reason
        with item.lock:
            if item.unreadable is not None:
                self._failed(item, f"{item.unreadable} (move it away to let the agent replace it)")
                return False
            try:
                key = generate_private_key(spec.key_type)
                if self.api is not None:
                    chain_pem = self.api.obtain(spec, key, *self._possession(item))
                else:
                    assert self.ca is not None and responder is not None
                    profile = spec.profile
                    if profile is not None and profile not in self.ca.profiles():
                        log.warning("%s: the CA does not offer profile %r; using its default",
                                    spec.name, profile)  # fmt: skip
                        profile = None
                    chain_pem = self.ca.obtain(spec.names, key, responder, profile)
                self._check_issued(spec, key, chain_pem)
                files.install(spec, self.state_dir, key, chain_pem.encode("ascii"))
            except VouchError as exc:
                self._failed(item, exc.message)
                return False
            except (OSError, ValueError) as exc:  # a surprise must not stop the other renewals
                self._failed(item, f"{type(exc).__name__}: {exc}")
                return False
            now = self.clock.now()
            item.failures, item.retry_at, item.last_error = 0, None, None
            item.last_renewed, item.renewals = now, item.renewals + 1
            item.reload_pending, item.reload_failures, item.reload_retry_at = True, 0, None
            self._assess(item)
            leaf = item.installed.leaf if item.installed else None
            log.info(
                "renewed %s (%s): serial %s, valid until %s; why: %s",
                spec.name, ", ".join(spec.names), _serial(leaf) if leaf else "?",
                iso(leaf.not_valid_after_utc) if leaf else "?", reason,
            )  # fmt: skip
            return True

    def _possession(
        self, item: Tracked
    ) -> tuple[x509.Certificate | None, tuple[Path, Path] | None]:
        """The installed certificate and its (chain, key) files, when it can prove possession:
        unexpired, matching its key."""
        installed, spec = item.installed, item.spec
        if installed is None or not installed.key_matches:
            return None, None
        if installed.leaf.not_valid_after_utc <= self.clock.now():
            return None, None
        if spec.key_path is not None and spec.chain_path is not None:
            return installed.leaf, (spec.chain_path, spec.key_path)
        assert spec.combined_path is not None
        return installed.leaf, (spec.combined_path, spec.combined_path)

    @staticmethod
    def _check_issued(spec: CertificateSpec, key: object, chain_pem: str) -> None:
        """Refuse to install what the CA sent unless it is a chain for our key and our names."""
        try:
            chain = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise BadInput("the CA sent no PEM certificate chain") from exc
        leaf = chain[0]
        public = key.public_key()  # type: ignore[attr-defined]
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if leaf.public_key().public_bytes(*fmt) != public.public_bytes(*fmt):
            raise BadInput("the CA sent a certificate for another key")
        if _names_of(leaf) != set(spec.names):
            raise BadInput(f"the CA sent a certificate for {sorted(_names_of(leaf))}")

    def _failed(self, item: Tracked, message: str) -> None:
        now = self.clock.now()
        item.failures += 1
        item.last_error = message
        not_after = item.installed.leaf.not_valid_after_utc if item.installed else None
        delay = retry_delay(
            item.failures, now=now, not_after=not_after,
            minimum=self.config.agent.retry_min_delta,
            maximum=self.config.agent.retry_max_delta, rng=self.rng,
        )  # fmt: skip
        item.retry_at = now + delay
        left = f"; the current certificate expires {iso(not_after)}" if not_after else ""
        log.error(
            "%s: renewal failed (attempt %d): %s; next try in %.1fs%s",
            item.spec.name, item.failures, message, delay.total_seconds(), left,
        )  # fmt: skip

    def reload(self) -> list[str]:
        """Run the reload command of every certificate whose installed files the service may
        not have loaded yet (just renewed, rolled forward at start, or after a failed reload
        once its backoff is over): each distinct command once. Returns the names whose reload
        failed; each stays pending, its marker kept, and is tried again at a later pass."""
        now = self.clock.now()
        commands: dict[tuple[str, ...], list[Tracked]] = {}
        for item in self.tracked:
            if not item.reload_pending:
                continue
            reload = item.spec.reload
            if not reload:
                self._reloaded(item)  # nothing to run
                continue
            argv = tuple(shlex.split(reload) if isinstance(reload, str) else reload)
            commands.setdefault(argv, []).append(item)
        failed: list[str] = []
        for argv, items in commands.items():
            if all(i.reload_retry_at is not None and i.reload_retry_at > now for i in items):
                continue  # backing off after a failure
            try:
                result = self._run(list(argv))
                ok, detail = result.returncode == 0, (result.stderr or result.stdout).strip()[-500:]
                detail = detail or f"exit status {result.returncode}"
            except (OSError, subprocess.TimeoutExpired) as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            names = ", ".join(i.spec.name for i in items)
            if ok:
                log.info("reloaded with `%s` for %s", shlex.join(argv), names)
                for item in items:
                    self._reloaded(item)
                continue
            for item in items:
                self._reload_failed(item, detail)
                failed.append(item.spec.name)
            retry = min(i.reload_retry_at for i in items if i.reload_retry_at is not None)
            log.error(
                "reload `%s` for %s failed (attempt %d): %s; next try in %.1fs",
                shlex.join(argv), names, items[0].reload_failures, detail,
                (retry - now).total_seconds(),
            )  # fmt: skip
        return failed

    def _reloaded(self, item: Tracked) -> None:
        try:
            files.clear_reload_pending(item.spec, self.state_dir)
        except VouchError as exc:  # reloaded once more at the next start: harmless
            log.warning("%s: %s", item.spec.name, exc.message)
        if item.reload_error is not None and item.last_error == item.reload_error:
            item.last_error = None
        item.reload_pending, item.reload_failures = False, 0
        item.reload_retry_at = item.reload_error = None

    def _reload_failed(self, item: Tracked, detail: str) -> None:
        now = self.clock.now()
        item.reload_failures += 1
        item.reload_error = item.last_error = f"installed, but the reload command failed: {detail}"
        not_after = item.installed.leaf.not_valid_after_utc if item.installed else None
        item.reload_retry_at = now + retry_delay(
            item.reload_failures, now=now, not_after=not_after,
            minimum=self.config.agent.retry_min_delta,
            maximum=self.config.agent.retry_max_delta, rng=self.rng,
        )  # fmt: skip

    def sweep(self, due: list[Tracked]) -> PassResult:
        """Renew the certificates that are due, then run the reloads that are owed."""
        outcomes = self._renew_all(due) if due else []
        renewed = [i.spec.name for i, ok in zip(due, outcomes, strict=True) if ok]
        failed = [i.spec.name for i, ok in zip(due, outcomes, strict=True) if not ok]
        failed += [n for n in self.reload() if n not in failed]
        return PassResult(renewed, failed)

    def _renew_all(self, due: list[Tracked]) -> list[bool]:
        for item in due:
            assert item.plan is not None
            log.info("%s: renewing now: %s", item.spec.name, item.plan.reason)
        try:
            with (
                self._responder() if self.api is None else contextlib.nullcontext() as responder,
                ThreadPoolExecutor(self.config.agent.concurrency) as pool,
            ):
                return list(pool.map(lambda i: self._renew(i, responder), due))
        except VouchError as exc:  # the challenge responder could not start: every one fails
            for item in due:
                self._failed(item, exc.message)
            return [False] * len(due)

    def due(self) -> list[Tracked]:
        now = self.clock.now()
        return [i for i in self.tracked if i.due_at <= now]

    # -- passes ------------------------------------------------------------------------------------

    def run_once(self, *, force: bool = False) -> PassResult:
        """One pass: every certificate that is due (with ``force``: every one) is renewed now;
        failures are not retried (the timer that runs ``--once`` is the retry)."""
        self.check()
        now = self.clock.now()
        for item in self.tracked:
            item.retry_at = item.reload_retry_at = None
            if force:
                item.plan = Plan(now, "renewal forced (--force)")
        result = self.sweep(self.due())
        self.write_status()
        return result

    def run_forever(self, stop: threading.Event) -> None:
        log.info("vouch agent keeping %d certificate(s) from %s",
                 len(self.tracked), self.source)  # fmt: skip
        while not stop.is_set():
            self.check()
            due = self.due()
            self.sweep(due)  # with nothing due: the owed reloads only
            if due:
                self.check()
            self.write_status()
            now = self.clock.now()
            wake = min(
                [i.due_at for i in self.tracked]
                + [i.ari_next for i in self.tracked if i.ari_next is not None]
                + [i.reload_retry_at for i in self.tracked if i.reload_retry_at is not None]
                + [now + MAX_SLEEP]
            )
            pause = max((wake - now).total_seconds(), 0.05)
            if not due:
                log.debug("sleeping %.1fs until %s", pause, iso(wake))
            stop.wait(pause)
        log.info("vouch agent stopped")

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        entries = []
        for item in self.tracked:
            leaf = item.installed.leaf if item.installed else None
            entries.append(
                CertificateStatus(
                    name=item.spec.name,
                    names=list(item.spec.names),
                    serial=_serial(leaf) if leaf else None,
                    not_before=iso(leaf.not_valid_before_utc) if leaf else None,
                    not_after=iso(leaf.not_valid_after_utc) if leaf else None,
                    next_renewal=iso(item.due_at) or "",
                    reason=item.plan.reason if item.plan else "",
                    failures=item.failures,
                    last_error=item.last_error,
                    last_renewed=iso(item.last_renewed),
                    renewals=item.renewals,
                    reload_pending=item.reload_pending,
                    reload_failures=item.reload_failures,
                    next_reload=iso(item.reload_retry_at) if item.reload_pending else None,
                )
            )
        return AgentStatus(
            updated=iso(self.clock.now()) or "",
            directory=self.source,
            renewal_info=bool(self._renewal_info),
            certificates=entries,
        )

    def write_status(self) -> None:
        try:
            write_status(self.state_dir, self.status())
        except VouchError as exc:
            log.error("cannot write the status file: %s", exc.message)


def _run_reload(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=RELOAD_TIMEOUT, check=False)
