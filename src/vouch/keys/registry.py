"""Key backends by URI scheme. Built in ``vouch.wiring`` and passed down, never global."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping

from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from vouch.errors import ConfigError, KeyUnavailable
from vouch.keys.base import DiscardsNewKeys, KeyBackend, KeyRef
from vouch.x509.keytypes import KeyType


class KeyRegistry:
    def __init__(
        self,
        backends: Iterable[KeyBackend],
        *,
        lazy: Mapping[str, Callable[[], KeyBackend]] | None = None,
    ) -> None:
        """``lazy``: backends built on first use, by scheme (one whose library is slow to load
        costs nothing to a process that never uses it)."""
        self._backends = {backend.scheme: backend for backend in backends}
        self._lazy = {
            scheme: build for scheme, build in (lazy or {}).items() if scheme not in self._backends
        }
        self._lock = threading.Lock()  # threads of a server: one backend per scheme

    def backend(self, ref: KeyRef) -> KeyBackend:
        if ref.scheme == "none":
            raise KeyUnavailable(
                "this CA's private key is not held by this vouch (offline or external)",
                hint="for an offline root pass --root-key DIR",
            )
        backend = self._backends.get(ref.scheme)
        if backend is not None:
            return backend
        if ref.scheme not in self._lazy:
            raise ConfigError(
                f"no key backend for scheme {ref.scheme!r}",
                hint=f"known: {', '.join(sorted({*self._backends, *self._lazy}))}",
            )
        with self._lock:
            backend = self._backends.get(ref.scheme)
            if backend is None:
                backend = self._backends[ref.scheme] = self._lazy[ref.scheme]()
            return backend

    def load(self, ref: KeyRef) -> CertificateIssuerPrivateKeyTypes:
        return self.backend(ref).load(ref)

    def generate(self, ref: KeyRef, key_type: KeyType) -> CertificateIssuerPrivateKeyTypes:
        return self.backend(ref).generate(ref, key_type)

    def discard_new(self, ref: KeyRef) -> bool:
        """Take back a key this process generated at ``ref`` and nothing refers to, if its
        backend can (see ``DiscardsNewKeys``); True if it was removed."""
        backend = self.backend(ref)
        return isinstance(backend, DiscardsNewKeys) and backend.discard(ref)

    @contextlib.contextmanager
    def discarding_on_failure(self, ref: KeyRef) -> Iterator[None]:
        """If the block fails (an error, Ctrl-C) before anything refers to the key just
        generated at ``ref``, take it back (``discard_new``); the block's error is the one
        raised."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.discard_new(ref)
            raise
