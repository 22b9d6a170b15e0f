"""Certificate linting before release, with pkilint (RFC 5280 and CA/B Forum TLS rules).

``Linter`` is the protocol the authority uses; ``PkilintLinter`` is the pkilint adapter. pkilint is
imported on first use: it takes a few hundred milliseconds to load, which one-shot commands with
linting off should not pay. ``ProcessLinter`` runs ``PkilintLinter`` in worker processes, so that a
server's own process (one core) keeps serving while certificates are linted on other cores.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported by ProcessLinter: one-shot commands start without multiprocessing
    from concurrent.futures import ProcessPoolExecutor

log = logging.getLogger(__name__)


class LintMode(StrEnum):
    BLOCK = "block"
    LOG = "log"
    OFF = "off"


class LintProfile(StrEnum):
    CABF_SERVERAUTH = "cabf-serverauth"
    RFC5280 = "rfc5280"


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str
    where: str

    def __str__(self) -> str:
        text = f"{self.code} ({self.severity})"
        return f"{text}: {self.message}" if self.message else text


BLOCKING_SEVERITIES = frozenset({"FATAL", "ERROR", "WARNING"})


class Linter(Protocol):
    def lint(self, der: bytes, profile: LintProfile) -> list[Finding]:
        """All findings at or above WARNING severity for one DER certificate."""
        ...


_psl_lock = threading.Lock()
_psl_shared: dict[tuple[tuple[str, Any], ...], Any] = {}


@contextmanager
def _one_public_suffix_list() -> Iterator[None]:
    """Let every pkilint validator built here share one parsed Public Suffix List.

    pkilint's internal-name validators each parse the whole list when created (about twenty per
    validator tree): most of the time and several MB of memory of building one. The list is
    only read after parsing, so one instance per set of options serves them all."""
    import publicsuffixlist
    from pkilint.common import alternative_name

    def shared(**options: Any) -> Any:
        key = tuple(sorted(options.items()))
        psl = _psl_shared.get(key)
        if psl is None:
            psl = _psl_shared[key] = publicsuffixlist.PublicSuffixList(**options)
        return psl

    with _psl_lock:
        alternative_name.publicsuffixlist = SimpleNamespace(PublicSuffixList=shared)
        try:
            yield
        finally:
            alternative_name.publicsuffixlist = publicsuffixlist


_deferred_lock = threading.Lock()


def _load_lazily(name: str) -> None:
    """Put off importing module ``name`` until one of its attributes is used.

    pkilint's ETSI module (imported with its CA/B Forum validators) imports ``iso639`` at the
    top, and importing that builds a table of every language: most of a second in every process
    that lints. Only the validator of QC statement PDS languages uses it, and vouch issues no QC
    statements. So a stand-in module takes its place in ``sys.modules`` and imports the real one
    the first time anyone asks it for an attribute (PEP 562 module ``__getattr__``).
    (``importlib.util.LazyLoader`` does not help: on 3.11 ``import iso639`` itself reads the
    module's ``__spec__``, which loads it.)"""
    with _deferred_lock:
        if name in sys.modules or importlib.util.find_spec(name) is None:
            return
        stand_in = types.ModuleType(name, f"stands in for {name} until it is first used")

        def load(attribute: str) -> Any:
            with _deferred_lock:
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]
                real = importlib.import_module(name)
            return getattr(real, attribute)

        stand_in.__getattr__ = load  # type: ignore[method-assign]
        sys.modules[name] = stand_in


class PkilintLinter:
    """Lints with pkilint's CA/B Forum serverauth validators or its RFC 5280 validators."""

    def __init__(
        self, *, allow: Collection[str] = (), validity_start: dt.datetime | None = None
    ) -> None:
        self._allow = frozenset(allow)
        self._validity_start = validity_start
        self._validators: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def lint(self, der: bytes, profile: LintProfile) -> list[Finding]:
        _load_lazily("iso639")
        from pkilint import finding_filter, loader
        from pkilint.cabf import serverauth

        document = loader.RFC5280CertificateDocumentLoader().load_der_document(der, "certificate")
        if profile is LintProfile.CABF_SERVERAUTH:
            cert_type = serverauth.determine_certificate_type(document)
            validator = self._validator(("cabf", cert_type))
            results = validator.validate(document.root)
            results, _ = finding_filter.filter_results(
                serverauth.create_serverauth_finding_filters(cert_type), results
            )
        else:
            results = self._validator(("rfc5280", None)).validate(document.root)
        return self._findings(results)

    def lint_many(self, items: Sequence[tuple[bytes, LintProfile]]) -> list[list[Finding]]:
        """``lint`` for each (DER, profile), in order."""
        return [self.lint(der, profile) for der, profile in items]

    def prewarm(self) -> None:
        """Build now the validators that leaf issuance uses, so the first certificate does not
        wait for them."""
        _load_lazily("iso639")
        from pkilint.cabf.serverauth import serverauth_constants

        kinds = serverauth_constants.CertificateType
        for cert_type in (kinds.DV_FINAL_CERTIFICATE, kinds.OV_FINAL_CERTIFICATE):
            self._validator(("cabf", cert_type))
        self._validator(("rfc5280", None))

    def lint_crl(
        self, der: bytes, *, arl: bool = False, profile: LintProfile = LintProfile.CABF_SERVERAUTH
    ) -> list[Finding]:
        """All findings at or above WARNING severity for one DER CRL.

        The CA/B Forum profile is pkilint's ``lint_crl --profile BR``: RFC 5280 plus the TLS
        Baseline Requirements' reason codes (7.2.2) and validity period (4.9.7: 10 days for a
        CRL, 365 for an ARL). ``arl=True`` for a root's CRL of intermediates, which may also say
        cACompromise. ``LintProfile.RFC5280`` is pkilint's PKIX profile, plus its warning for an
        "unspecified" reasonCode (RFC 5280 5.3.1 says to omit the extension instead)."""
        _load_lazily("iso639")
        from pkilint import loader

        document = loader.RFC5280CertificateListDocumentLoader().load_der_document(der, "crl")
        validator = self._validator(("crl", (profile, arl)))
        return self._findings(validator.validate(document.root))

    def _validator(self, key: tuple[str, Any]) -> Any:
        # Building a validator tree is costly; do it once per certificate type and reuse it.
        with self._lock:
            validator = self._validators.get(key)
            if validator is None:
                validator = self._build(*key)
                self._validators[key] = validator
            return validator

    def _build(self, kind: str, cert_type: Any) -> Any:
        with _one_public_suffix_list():
            return self._build_validator(kind, cert_type)

    def _build_validator(self, kind: str, cert_type: Any) -> Any:
        _load_lazily("iso639")
        from pkilint.cabf import serverauth
        from pkilint.pkix import certificate, extension, name

        if kind == "crl":
            return _crl_validator(*cert_type)
        if kind == "cabf":
            if self._validity_start is not None:
                return certificate.create_pkix_certificate_validator_container(
                    serverauth.create_decoding_validators(),
                    serverauth.create_validators(cert_type, self._validity_start),
                )
            return certificate.create_pkix_certificate_validator_container(
                serverauth.create_decoding_validators(),
                serverauth.create_validators(cert_type),
            )
        return certificate.create_pkix_certificate_validator_container(
            certificate.create_decoding_validators(
                name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
            ),
            [
                certificate.create_issuer_validator_container([]),
                certificate.create_validity_validator_container(),
                certificate.create_subject_validator_container([]),
                certificate.create_extensions_validator_container([]),
                certificate.create_spki_validator_container([]),
            ],
        )

    def _findings(self, results: Any) -> list[Finding]:
        findings = []
        for result in results:
            for description in result.finding_descriptions:
                severity = description.finding.severity.name
                code = description.finding.code
                if severity in BLOCKING_SEVERITIES and code not in self._allow:
                    findings.append(
                        Finding(
                            code=code,
                            severity=severity,
                            message=description.message or "",
                            where=str(result.node.path),
                        )
                    )
        return findings


def _crl_validator(profile: LintProfile, arl: bool) -> Any:
    """pkilint's CRL validator tree, as its ``lint_crl`` command builds it."""
    from pkilint import pkix
    from pkilint.cabf import cabf_crl
    from pkilint.pkix import crl, extension, name
    from pkilint.pkix.crl import crl_extension

    crl_type = (
        crl.CertificateRevocationListType.ARL if arl else crl.CertificateRevocationListType.CRL
    )
    validity: list[Any] = []
    document: list[Any] = []
    if profile is LintProfile.CABF_SERVERAUTH:
        validity.append(cabf_crl.create_validity_period_validator(crl_type))
        document.append(cabf_crl.CabfCrlReasonCodeAllowlistValidator(crl_type))
    else:
        document.append(crl_extension.CrlReasonCodeValidator())
    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container(validity),
            crl.create_extensions_validator_container([]),
            *document,
        ],
    )


# -- linting in worker processes -------------------------------------------------------------------

# Each worker process's own linter, set by its initializer: a ProcessPoolExecutor task can reach
# per-process state only through a module global.
_worker_linter: PkilintLinter | None = None


def _start_worker(allow: tuple[str, ...], validity_start: dt.datetime | None, parent: int) -> None:
    global _worker_linter
    # Ctrl-C reaches the whole process group: the server shuts its workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A server killed outright cannot stop its workers, and they would wait for work forever
    # (their siblings keep the task queue open): each leaves once its parent is gone.
    threading.Thread(target=_leave_with, args=(parent,), daemon=True).start()
    linter = PkilintLinter(allow=allow, validity_start=validity_start)
    linter.prewarm()
    _worker_linter = linter


def _leave_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _in_worker(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Finding]:
    assert _worker_linter is not None, "the worker's initializer sets it"
    result: list[Finding] = getattr(_worker_linter, method)(*args, **kwargs)
    return result


def _ready() -> int:
    return os.getpid()


class ProcessLinter:
    """``PkilintLinter`` in a pool of worker processes, with the same findings.

    Workers are started with ``spawn`` (not ``fork``: the server has threads). If the pool breaks
    (a worker died), it is replaced and the lint tried once more; if that fails too, or a lint
    takes longer than ``timeout``, linting goes on in this process for good, with a warning:
    slower, never wrong, never stuck."""

    def __init__(
        self,
        workers: int,
        *,
        allow: Collection[str] = (),
        validity_start: dt.datetime | None = None,
        timeout: float = 60.0,
    ) -> None:
        if workers < 1:
            raise ValueError("a lint pool needs at least one worker")
        self._workers = workers
        self._allow = tuple(sorted(allow))
        self._validity_start = validity_start
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._in_process = False
        self._closed = False
        self._local: PkilintLinter | None = None

    @property
    def workers(self) -> int:
        return self._workers

    def start(self) -> None:
        """Start every worker now, without waiting for them: the first certificates then need
        not wait for a worker to load pkilint."""
        pool = self._current()
        if pool is not None:
            # The executor starts a worker per task that finds none idle.
            for _ in range(self._workers):
                pool.submit(_ready)

    def lint(self, der: bytes, profile: LintProfile) -> list[Finding]:
        return self._call("lint", (der, profile), {})

    def lint_many(self, items: Sequence[tuple[bytes, LintProfile]]) -> list[list[Finding]]:
        """``lint`` for each (DER, profile), in order, spread over the workers."""
        if len(items) <= 1:
            return [self.lint(der, profile) for der, profile in items]
        pool = self._current()
        if pool is None:
            return self._local_linter().lint_many(items)
        from concurrent.futures.process import BrokenProcessPool

        futures: list[Future[list[Finding]] | None] = []
        for der, profile in items:
            try:
                futures.append(pool.submit(_in_worker, "lint", (der, profile), {}))
            except RuntimeError:  # broken or shut down meanwhile
                futures.append(None)
        results: list[list[Finding]] = []
        for future, (der, profile) in zip(futures, items, strict=True):
            if future is not None:
                try:
                    results.append(future.result(timeout=self._timeout))
                    continue
                except (BrokenProcessPool, CancelledError):
                    pass
                except TimeoutError:
                    self._give_up(pool, f"a lint took longer than {self._timeout:.0f} s")
            # Through lint's recovery: a new pool, or this process.
            results.append(self.lint(der, profile))
        return results

    def lint_crl(
        self, der: bytes, *, arl: bool = False, profile: LintProfile = LintProfile.CABF_SERVERAUTH
    ) -> list[Finding]:
        return self._call("lint_crl", (der,), {"arl": arl, "profile": profile})

    def close(self) -> None:
        """Stop the workers and wait for them to exit; later lints run in this process."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Finding]:
        from concurrent.futures.process import BrokenProcessPool

        for attempt in range(2):
            pool = self._current()
            if pool is None:
                break
            try:
                future = pool.submit(_in_worker, method, args, kwargs)
            except BrokenProcessPool:
                self._broken(pool, attempt)
                continue
            except RuntimeError:
                continue  # shut down meanwhile: closed, or replaced by another thread
            try:
                return future.result(timeout=self._timeout)
            except BrokenProcessPool:
                self._broken(pool, attempt)
            except CancelledError:
                continue  # closed, or replaced by another thread, while it waited
            except TimeoutError:
                self._give_up(pool, f"a lint took longer than {self._timeout:.0f} s")
                break
        result: list[Finding] = getattr(self._local_linter(), method)(*args, **kwargs)
        return result

    def _broken(self, pool: ProcessPoolExecutor, attempt: int) -> None:
        if attempt == 0:
            log.warning("a lint worker died; starting a new lint pool")
            self._discard(pool)
        else:
            self._give_up(pool, "the new lint pool broke too")

    def _current(self) -> ProcessPoolExecutor | None:
        """The pool, started if need be; None once linting is in this process."""
        with self._lock:
            if self._closed or self._in_process:
                return None
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self._pool = ProcessPoolExecutor(
                    max_workers=self._workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(self._allow, self._validity_start, os.getpid()),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor, *, kill: bool = False) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        killed = []
        if kill:
            # A stuck worker would never take the shutdown message.
            killed = list((pool._processes or {}).values())
            for process in killed:
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in killed:
            process.join(timeout=5)  # reaped: no zombie, and gone when this returns

    def _give_up(self, pool: ProcessPoolExecutor, why: str) -> None:
        with self._lock:
            already = self._in_process
            self._in_process = True
        if not already:
            log.warning("%s: linting in the server process from now on", why)
        self._discard(pool, kill=True)

    def _local_linter(self) -> PkilintLinter:
        with self._lock:
            if self._local is None:
                self._local = PkilintLinter(allow=self._allow, validity_start=self._validity_start)
            return self._local
