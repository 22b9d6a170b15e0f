"""PKCS#11 keys: made and used inside a token (an HSM; SoftHSM2 in tests), never outside it.

A key reference names the token and the key object, as RFC 7512 does:
``pkcs11:token=vouch;object=issuing``, optionally with ``id=HEX`` (the CKA_ID, in hex, or
percent-encoded bytes as RFC 7512 writes it), alone or with ``object``. The PIN comes from the
``PinSource`` the backend is given (a file or ``VOUCH_PKCS11_PIN``, read by the wiring), never from
a reference or the config; no error or log line carries it.

A loaded key is a subclass of ``cryptography``'s key class whose ``sign`` goes to the token, so
certificate, CRL and OCSP builders and ``vouch.x509.signing`` use it unchanged. Keys are generated
in the token as sensitive, non-extractable token objects; asking for their bytes raises.

Sessions: each token has a pool of up to ``pool_size`` sessions, lent to one signing thread at a
time; the first one logs in, and the login holds for every session of the token. When the token
goes away (an error that is not about the request itself: a session or object handle gone, the
token or device removed, a general error), the signature in flight fails with ``KeyUnavailable``
and the next use re-initializes the library (C_Finalize, C_Initialize: the only way SoftHSM2, and
many HSM modules, re-read their slots), once no call is in flight, then logs in again. A key
object only ever signs with the key whose public key it was loaded with: a token re-created with
another key under the same label is refused, not silently used.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import secrets
import sysconfig
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar
from urllib.parse import quote, unquote, unquote_to_bytes

import pkcs11
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.hazmat.primitives.asymmetric.padding import (
    MGF1,
    PSS,
    AsymmetricPadding,
    PKCS1v15,
)
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

from vouch.errors import (
    AuthenticationFailed,
    ConfigError,
    Conflict,
    KeyUnavailable,
    PolicyViolation,
    VouchError,
)
from vouch.keys.base import KeyRef
from vouch.x509.der import encode_tlv, read_tlv
from vouch.x509.keytypes import KeyType as VouchKeyType
from vouch.x509.keytypes import key_type_of
from vouch.x509.signing import sign_data, signature_hash_for

if TYPE_CHECKING:
    from cryptography.utils import Buffer
    from pkcs11._pkcs11 import lib as Pkcs11Lib

log = logging.getLogger(__name__)

T = TypeVar("T")

PinSource = Callable[[str], str]
"""Asked for the user PIN of the token it names (a short description); returns it."""

SOFTHSM = "softhsm/libsofthsm2.so"
CHECK_HINT = "is the token present? (pkcs11-tool --module MODULE --list-token-slots)"

_OCTET_STRING = 0x04
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
    bytes.fromhex("06052b81040023"): ec.SECP521R1(),
}
_ED25519_PARAMS = (bytes.fromhex("06032b6570"), encode_tlv(0x13, b"edwards25519"))
_EC_PARAMS: dict[str, bytes] = {
    "ec-p256": bytes.fromhex("06082a8648ce3d030107"),
    "ec-p384": bytes.fromhex("06052b81040022"),
}


# -- module and references -----------------------------------------------------------------------


def default_module_paths() -> tuple[Path, ...]:
    """Where SoftHSM2's module usually is: Debian's path, then the multiarch and local ones."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return (
        Path("/usr/lib") / SOFTHSM,
        Path("/usr/lib") / multiarch / SOFTHSM,
        Path("/usr/local/lib") / SOFTHSM,
    )


def find_module(path: str | Path | None = None) -> Path:
    """The PKCS#11 module to load: ``path`` (``keys.pkcs11_module``), else SoftHSM2's."""
    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise ConfigError(
                f"PKCS#11 module {found} does not exist", hint="check keys.pkcs11_module"
            )
        return found
    for candidate in default_module_paths():
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in default_module_paths())
    raise ConfigError(
        f"no PKCS#11 module found (looked at {looked})",
        hint="set keys.pkcs11_module to your HSM's module, or install softhsm2",
    )


@dataclass(frozen=True)
class Pkcs11Ref:
    """A key object in a token: ``pkcs11:token=LABEL;object=KEYLABEL;id=HEX``."""

    token: str
    label: str | None = None
    id: bytes | None = None

    @classmethod
    def parse(cls, ref: KeyRef) -> Pkcs11Ref:
        if ref.scheme != "pkcs11":
            raise ConfigError(f"not a pkcs11 key reference: {ref}")
        path, _, query = ref.location.partition("?")
        if query:
            raise ConfigError(
                f"pkcs11 key references take no query ({ref.scheme}:{path}?...)",
                hint="the PIN comes from keys.pkcs11_pin_file or VOUCH_PKCS11_PIN, never a URI",
            )
        fields: dict[str, str] = {}
        for number, part in enumerate(filter(None, path.split(";")), 1):
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            if not sep or name in fields:  # (the text is not echoed: it could hold a secret)
                raise ConfigError(
                    f"pkcs11 key reference: part {number} is not a new name=value", hint=_REF_HINT
                )
            fields[name] = value
        unknown = set(fields) - {"token", "object", "id", "type"}
        if unknown:
            raise ConfigError(
                f"pkcs11 key reference: unknown attribute {sorted(unknown)[0]!r}", hint=_REF_HINT
            )
        if fields.get("type", "private") != "private":
            raise ConfigError("a pkcs11 signing key reference names a private key (type=private)")
        token = unquote(fields.get("token", ""))
        label = unquote(fields["object"]) if "object" in fields else None
        key_id = _parse_id(fields["id"]) if "id" in fields else None
        if not token or (not label and not key_id):
            raise ConfigError(
                f"pkcs11 key reference {str(ref)!r} needs token= and object= or id=",
                hint=_REF_HINT,
            )
        return cls(token, label or None, key_id or None)

    def key_ref(self) -> KeyRef:
        parts = [f"token={_quote(self.token)}"]
        if self.label is not None:
            parts.append(f"object={_quote(self.label)}")
        if self.id is not None:
            parts.append(f"id={self.id.hex()}")
        return KeyRef("pkcs11", ";".join(parts))

    def __str__(self) -> str:
        return str(self.key_ref())

    def describe(self) -> str:
        what = f"key {self.label!r}" if self.label is not None else "key"
        if self.id is not None:
            what += f" (id {self.id.hex()})"
        return f"{what} on token {self.token!r}"


_REF_HINT = "e.g. pkcs11:token=vouch;object=issuing (or ;id=HEX)"


def _quote(value: str) -> str:
    return quote(value, safe="-._~:@!$'()*+,")


def _parse_id(text: str) -> bytes:
    if "%" in text:
        return unquote_to_bytes(text)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"pkcs11 key reference: id={text!r} is not hex", hint=_REF_HINT) from None


# -- the library, re-initialized only when no call is in flight ----------------------------------


class _InitArgs(ctypes.Structure):
    """CK_C_INITIALIZE_ARGS (PKCS#11 2.40 base, 5.4)."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


_CkFunction = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)


class _FunctionListHead(ctypes.Structure):
    """The start of CK_FUNCTION_LIST: the version, then C_Initialize and C_Finalize."""

    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("major", ctypes.c_ubyte),
        ("minor", ctypes.c_ubyte),
        ("C_Initialize", _CkFunction),
        ("C_Finalize", _CkFunction),
    ]


_CKF_OS_LOCKING_OK = 0x02
_CKR_CANT_LOCK = 0x0A
_CKR_CRYPTOKI_NOT_INITIALIZED = 0x190


class Pkcs11Module:
    """One PKCS#11 library in this process, initialized for use from several threads.

    python-pkcs11 calls ``C_Initialize(NULL)``, which promises the library that no two threads
    call it at once (PKCS#11 2.40 base 5.4; SoftHSM2 then takes no locks and crashes under
    concurrent signing). So the library is re-initialized here with ``CKF_OS_LOCKING_OK``; a
    library that cannot lock (``CKR_CANT_LOCK``) is initialized plainly and every call to it is
    serialized instead.

    C_Initialize and C_Finalize act on the whole process: build one ``Pkcs11Module`` per library
    (the wiring does) and share it between backends. ``calls()`` brackets every use of the
    library; ``reset`` re-initializes it (how SoftHSM2 and many HSM modules re-read their slots)
    once no call is in flight, at most every ``reconnect_interval`` seconds.
    """

    def __init__(
        self, path: str | Path | None = None, *, reconnect_interval: float = 1.0, wait: float = 5.0
    ) -> None:
        self._requested = path
        self._path: Path | None = None
        self._reconnect_interval = reconnect_interval
        self._wait = wait
        self._cond = threading.Condition()
        self._serial = threading.Lock()  # held around every call when the library cannot lock
        self._lib: Pkcs11Lib | None = None
        self._library: ctypes.CDLL | None = None
        self._functions: _FunctionListHead | None = None
        self._initialized = False
        self.threads_ok = True
        self._active = 0
        self._resetting = False
        self._generation = 0
        self._last_reset = float("-inf")

    @property
    def path(self) -> Path:
        """The library's file, found on first use (so that a home without PKCS#11 keys never
        needs one); raises ``ConfigError`` when there is none."""
        if self._path is None:
            self._path = find_module(self._requested)
        return self._path

    @property
    def generation(self) -> int:
        """Bumped by every re-initialization: sessions of an older generation are gone."""
        return self._generation

    @contextmanager
    def calls(self) -> Iterator[tuple[Pkcs11Lib, int]]:
        with self._cond:
            if not self._cond.wait_for(lambda: not self._resetting, self._wait):
                raise KeyUnavailable(
                    f"the PKCS#11 module {self.path.name} is still reconnecting after "
                    f"{self._wait:g} s",
                    hint=CHECK_HINT,
                )
            lib = self._loaded()
            self._active += 1
            generation = self._generation
        try:
            if self.threads_ok:
                yield lib, generation
            else:
                with self._serial:
                    yield lib, generation
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _loaded(self) -> Pkcs11Lib:
        """The library, loaded and initialized (called with ``_cond`` held)."""
        if self._lib is not None and self._initialized:
            return self._lib
        try:
            if self._lib is None:
                lib = pkcs11.lib(str(self.path))  # loads it and calls C_Initialize(NULL)
                lib.finalize()  # to initialize it again, below, for threads
                self._library, self._functions = _function_list(self.path)
                self._lib = lib
        except (p11.PKCS11Error, OSError) as exc:
            raise KeyUnavailable(
                f"cannot load the PKCS#11 module {self.path} ({type(exc).__name__})",
                hint="check keys.pkcs11_module, and build one Pkcs11Module per library",
            ) from exc
        self._initialize()
        return self._lib

    def _initialize(self) -> None:
        assert self._functions is not None
        args = _InitArgs(None, None, None, None, _CKF_OS_LOCKING_OK, None)
        rv = self._functions.C_Initialize(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p))
        if rv == _CKR_CANT_LOCK:
            log.warning("PKCS#11 module %s cannot lock: serializing calls to it", self.path)
            self.threads_ok = False
            rv = self._functions.C_Initialize(None)
        if rv != 0:
            raise KeyUnavailable(
                f"cannot initialize the PKCS#11 module {self.path.name} (CKR 0x{rv:x})",
                hint=CHECK_HINT,
            )
        self._initialized = True

    def _finalize(self) -> None:
        if self._functions is not None and self._initialized:
            self._initialized = False
            rv = self._functions.C_Finalize(None)
            if rv not in (0, _CKR_CRYPTOKI_NOT_INITIALIZED):
                log.warning("C_Finalize of %s returned CKR 0x%x", self.path, rv)

    def reset(self, seen: int) -> None:
        """Re-initialize the library if it is still at generation ``seen`` (else someone did)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._resetting, self._wait)
            if self._generation != seen or self._lib is None or self._resetting:
                return
            since = time.monotonic() - self._last_reset
            if since < self._reconnect_interval:
                raise KeyUnavailable(
                    f"the PKCS#11 module {self.path.name} reconnected {since:.1f} s ago and "
                    "the token is still unusable",
                    hint=CHECK_HINT,
                )
            self._resetting = True
            try:
                if not self._cond.wait_for(lambda: self._active == 0, self._wait):
                    raise KeyUnavailable(
                        f"PKCS#11 calls to {self.path.name} still in flight after {self._wait:g} s;"
                        " not re-initializing the module under them",
                        hint="the HSM may be hung: check it, then restart vouch if needed",
                    )
                log.warning("re-initializing the PKCS#11 module %s to reconnect", self.path)
                self._finalize()
                self._generation += 1
                self._last_reset = time.monotonic()
                self._initialize()
            finally:
                self._resetting = False
                self._cond.notify_all()

    def close(self) -> None:
        """C_Finalize: closes every session of this library in the process."""
        with self._cond:
            self._finalize()
            self._generation += 1


def _function_list(path: Path) -> tuple[ctypes.CDLL, _FunctionListHead]:
    """C_Initialize and C_Finalize of the library python-pkcs11 loaded (dlopen gives the same
    instance), through C_GetFunctionList as the standard asks; and the handle, to keep."""
    library = ctypes.CDLL(str(path))
    pointer = ctypes.POINTER(_FunctionListHead)()
    rv = library.C_GetFunctionList(ctypes.byref(pointer))
    if rv != 0 or not pointer:
        raise OSError(f"C_GetFunctionList failed (CKR 0x{rv:x})")
    return library, pointer.contents


# -- session pools, one per token ----------------------------------------------------------------


class _Missing(Exception):
    """The token or object is not there: re-read the slots once, then report ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Locator:
    """Where a loaded key is, and the public key (SPKI DER) it must still have."""

    ref: Pkcs11Ref
    spki: bytes


class _Session:
    """A pooled session, and the private-key objects already found (and checked) in it."""

    def __init__(self, session: pkcs11.Session, mechanisms: frozenset[Mechanism]) -> None:
        self.session = session
        self.mechanisms = mechanisms
        self._keys: dict[_Locator, pkcs11.SignMixin] = {}

    def signing_key(self, locator: _Locator) -> pkcs11.SignMixin:
        key = self._keys.get(locator)
        if key is None:
            private = _find_private(self.session, locator.ref)
            if _spki(_public_key(self.session, private)) != locator.spki:
                raise KeyUnavailable(
                    f"{locator.ref.describe()} is no longer the key that was loaded "
                    "(was the token re-created?)",
                    hint="load the key again (restart vouch) if the new key is the right one",
                )
            key = self._keys[locator] = private
        return key


class _TokenSessions:
    """Up to ``size`` sessions to one token, logged in once, rebuilt after a module reset."""

    def __init__(self, module: Pkcs11Module, label: str, pin: PinSource, size: int, wait: float):
        self.label = label
        self._module = module
        self._pin = pin
        self._size = size
        self._wait = wait
        self._cond = threading.Condition()
        self._open_lock = threading.Lock()
        self._idle: list[_Session] = []
        self._count = 0
        self._generation = -1  # the module generation the sessions belong to
        self._token: pkcs11.Token | None = None
        self._anchor: pkcs11.Session | None = None  # the session that logged in
        self._mechanisms: frozenset[Mechanism] = frozenset()
        self._broken_in: int | None = None  # generation in which the token was lost or missing
        self._rejected_pin: bytes | None = None  # SHA-256 of a PIN the token refused

    def run(self, what: str, operation: Callable[[_Session], T]) -> T:
        """``operation`` on a pooled session; PKCS#11 errors become vouch errors.

        A token or object found missing is looked for once more after re-reading the slots."""
        missing: _Missing | None = None
        for _attempt in (0, 1):
            broken = self._broken_in
            if broken is not None:
                try:
                    self._module.reset(broken)
                except KeyUnavailable:
                    if missing is None:
                        raise
                    break
            with self._module.calls() as (lib, generation):
                try:
                    return self._run_once(lib, generation, what, operation)
                except _Missing as exc:
                    missing = exc
                    self._broken_in = generation
        assert missing is not None
        raise KeyUnavailable(missing.message, hint=CHECK_HINT)

    def _run_once(
        self, lib: Pkcs11Lib, generation: int, what: str, operation: Callable[[_Session], T]
    ) -> T:
        pooled = self._acquire(lib, generation)
        try:
            result = operation(pooled)
        except p11.PKCS11Error as exc:
            if not _is_lost(exc):
                self._release(pooled, generation)
                _raise_for(exc, what, self.label)
            self._lost(pooled, generation, exc)
            raise KeyUnavailable(
                f"the PKCS#11 token {self.label!r} went away while {what} ({type(exc).__name__})",
                hint="vouch reconnects on the next use; " + CHECK_HINT,
            ) from exc
        except BaseException:
            self._release(pooled, generation)
            raise
        self._release(pooled, generation)
        return result

    def _acquire(self, lib: Pkcs11Lib, generation: int) -> _Session:
        deadline = time.monotonic() + self._wait
        with self._cond:
            if self._generation != generation:
                # The module was re-initialized: every old handle is gone (and must not be used).
                self._idle, self._count, self._token, self._anchor = [], 0, None, None
                self._generation = generation
            if self._broken_in == generation:
                raise KeyUnavailable(
                    f"the PKCS#11 token {self.label!r} is unavailable", hint=CHECK_HINT
                )
            while not self._idle and self._count >= self._size:
                if not self._cond.wait(deadline - time.monotonic()):
                    raise KeyUnavailable(
                        f"all {self._size} sessions to PKCS#11 token {self.label!r} stayed busy "
                        f"for {self._wait:g} s",
                        hint="the HSM is slow or hung; raise the pool size or check the HSM",
                    )
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return self._open(lib)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _open(self, lib: Pkcs11Lib) -> _Session:
        with self._open_lock:
            try:
                if self._anchor is None:
                    self._login(lib)
                    assert self._anchor is not None
                    return _Session(self._anchor, self._mechanisms)
                assert self._token is not None
                return _Session(self._token.open(rw=True), self._mechanisms)
            except p11.PKCS11Error as exc:
                if _is_lost(exc):
                    raise _Missing(
                        f"cannot open a session to PKCS#11 token {self.label!r} "
                        f"({type(exc).__name__})"
                    ) from exc
                _raise_for(exc, "opening a session", self.label)

    def _login(self, lib: Pkcs11Lib) -> None:
        try:
            token = lib.get_token(token_label=self.label)
        except p11.MultipleTokensReturned:
            raise KeyUnavailable(
                f"several PKCS#11 tokens are labelled {self.label!r}", hint="relabel one"
            ) from None
        except p11.PKCS11Error as exc:  # NoSuchToken, or a slot whose token vanished
            raise _Missing(f"no PKCS#11 token labelled {self.label!r}") from exc
        pin = self._pin(f"PKCS#11 token {self.label}")
        digest = hashlib.sha256(pin.encode("utf-8")).digest()
        if self._rejected_pin is not None and secrets.compare_digest(digest, self._rejected_pin):
            raise AuthenticationFailed(
                f"the PIN for PKCS#11 token {self.label!r} was refused before; not trying it "
                "again (tokens lock after a few wrong PINs)",
                hint="fix keys.pkcs11_pin_file or VOUCH_PKCS11_PIN",
            )
        try:
            session = token.open(rw=True, user_pin=pin)
        except p11.UserAlreadyLoggedIn:
            session = token.open(rw=True)  # another session of this process logged in already
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange) as exc:
            self._rejected_pin = digest
            raise AuthenticationFailed(
                f"wrong PIN for PKCS#11 token {self.label!r}",
                hint="fix keys.pkcs11_pin_file or VOUCH_PKCS11_PIN",
            ) from exc
        self._rejected_pin = None
        try:
            mechanisms = frozenset(token.slot.get_mechanisms())
        except p11.PKCS11Error:
            mechanisms = frozenset()
        self._token, self._anchor, self._mechanisms = token, session, mechanisms

    def _release(self, pooled: _Session, generation: int) -> None:
        with self._cond:
            if generation == self._generation:
                self._idle.append(pooled)
                self._cond.notify()

    def _lost(self, pooled: _Session, generation: int, exc: Exception) -> None:
        log.warning(
            "PKCS#11 token %r lost (%s); reconnecting on next use", self.label, type(exc).__name__
        )
        with self._cond:
            self._broken_in = generation
            if generation == self._generation:
                self._count -= 1
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            if self._generation != self._module.generation:
                sessions = []  # from before a reset: already gone
            else:
                others = [p.session for p in self._idle if p.session is not self._anchor]
                # The anchor goes last: closing it logs the token out.
                sessions = others + ([self._anchor] if self._anchor is not None else [])
            self._idle, self._count, self._token, self._anchor = [], 0, None, None
            self._generation = -1
        if sessions:
            with self._module.calls():
                for session in sessions:
                    _close_quietly(session)


def _close_quietly(session: pkcs11.Session) -> None:
    with suppress(p11.PKCS11Error):
        session.close()


_NOT_LOST = (
    p11.ArgumentsBad,
    p11.AttributeSensitive,
    p11.AttributeTypeInvalid,
    p11.AttributeValueInvalid,
    p11.DataInvalid,
    p11.DataLenRange,
    p11.DomainParamsInvalid,
    p11.FunctionNotSupported,
    p11.KeySizeRange,
    p11.KeyTypeInconsistent,
    p11.MechanismInvalid,
    p11.MechanismParamInvalid,
    p11.MultipleObjectsReturned,
    p11.NoSuchKey,
    p11.PinExpired,
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinLocked,
    p11.SessionCount,
    p11.SessionReadOnly,
    p11.TemplateIncomplete,
    p11.TemplateInconsistent,
    p11.TokenWriteProtected,
    p11.UserPinNotInitialized,
)


def _is_lost(exc: p11.PKCS11Error) -> bool:
    """Whether ``exc`` says the session, object, token or device is gone (anything not about the
    request itself), so that the next use must reconnect."""
    return not isinstance(exc, _NOT_LOST)


def _raise_for(exc: p11.PKCS11Error, what: str, token: str) -> NoReturn:
    name = type(exc).__name__
    if isinstance(exc, p11.PinLocked):
        raise AuthenticationFailed(
            f"the user PIN of PKCS#11 token {token!r} is locked",
            hint="the security officer must unlock it (pkcs11-tool --init-pin --login --login-type so)",
        ) from exc
    if isinstance(exc, (p11.PinExpired, p11.UserPinNotInitialized)):
        raise AuthenticationFailed(
            f"the user PIN of PKCS#11 token {token!r} is expired or not set ({name})"
        ) from exc
    if isinstance(exc, p11.SessionCount):
        raise KeyUnavailable(
            f"PKCS#11 token {token!r} refuses more sessions", hint="lower the session pool size"
        ) from exc
    raise KeyUnavailable(f"PKCS#11 token {token!r} refused {what} ({name})") from exc


# -- finding keys and reading public keys --------------------------------------------------------


def _find_private(session: pkcs11.Session, ref: Pkcs11Ref) -> pkcs11.SignMixin:
    template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
    if ref.label is not None:
        template[Attribute.LABEL] = ref.label
    if ref.id is not None:
        template[Attribute.ID] = ref.id
    found = list(session.get_objects(template))  # consumed whole: the search ends here
    if not found:
        raise _Missing(f"no private {ref.describe()}")
    if len(found) > 1:
        raise KeyUnavailable(
            f"{len(found)} private keys match {ref.describe()}",
            hint="name it with object= and id= (vouch keys list)",
        )
    [key] = found
    if not isinstance(key, pkcs11.SignMixin):
        raise KeyUnavailable(f"{ref.describe()} is not allowed to sign (CKA_SIGN is false)")
    return key


def _public_key(
    session: pkcs11.Session, private: pkcs11.SignMixin
) -> CertificateIssuerPublicKeyTypes:
    """The public half of ``private``, from the public-key object with the same CKA_ID (or label)."""
    key_type = private.key_type
    if key_type is KeyType.RSA:
        modulus, exponent = private[Attribute.MODULUS], private[Attribute.PUBLIC_EXPONENT]
        return rsa.RSAPublicNumbers(
            int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")
        ).public_key()
    key_id, label = private[Attribute.ID], private[Attribute.LABEL]
    template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PUBLIC_KEY}
    if key_id:
        template[Attribute.ID] = key_id
    else:
        template[Attribute.LABEL] = label
    found = list(session.get_objects(template))
    if len(found) != 1:
        raise KeyUnavailable(
            f"PKCS#11 key {label!r}: {len(found)} public-key objects match it (one is needed to "
            "know its public key)"
        )
    params, point = bytes(found[0][Attribute.EC_PARAMS]), bytes(found[0][Attribute.EC_POINT])
    if key_type is KeyType.EC:
        curve = _CURVES.get(params)
        if curve is None:
            raise KeyUnavailable(f"PKCS#11 key {label!r} is on a curve vouch does not use")
        size = (curve.key_size + 7) // 8
        point = _unwrap_point(point, (2 * size + 1, size + 1))
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    if key_type is KeyType.EC_EDWARDS and params in _ED25519_PARAMS:
        return ed25519.Ed25519PublicKey.from_public_bytes(_unwrap_point(point, (32,)))
    raise KeyUnavailable(f"PKCS#11 key {label!r} has a type vouch cannot sign with ({key_type})")


def _unwrap_point(value: bytes, raw_sizes: tuple[int, ...]) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING (PKCS#11 2.40); some modules give the raw point, told
    apart by its size (an uncompressed point also starts with 0x04)."""
    if len(value) in raw_sizes:
        return value
    try:
        tag, header, length = read_tlv(value, 0)
    except ValueError:
        return value
    if tag == _OCTET_STRING and header + length == len(value):
        return value[header:]
    return value


def _spki(public_key: CertificateIssuerPublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- key objects: cryptography's classes, signing in the token -----------------------------------


@dataclass(frozen=True)
class _HashSpec:
    digest_info: bytes  # the DER DigestInfo prefix for PKCS#1 v1.5 (RFC 8017 9.2, note 1)
    hash_mechanism: Mechanism
    mgf: int
    pkcs1: Mechanism
    pss: Mechanism


_HASHES = {
    "sha224": _HashSpec(
        bytes.fromhex("302d300d06096086480165030402040500041c"),
        Mechanism.SHA224,
        5,  # CKG_MGF1_SHA224
        Mechanism.SHA224_RSA_PKCS,
        Mechanism.SHA224_RSA_PKCS_PSS,
    ),
    "sha256": _HashSpec(
        bytes.fromhex("3031300d060960864801650304020105000420"),
        Mechanism.SHA256,
        pkcs11.MGF.SHA256,
        Mechanism.SHA256_RSA_PKCS,
        Mechanism.SHA256_RSA_PKCS_PSS,
    ),
    "sha384": _HashSpec(
        bytes.fromhex("3041300d060960864801650304020205000430"),
        Mechanism.SHA384,
        pkcs11.MGF.SHA384,
        Mechanism.SHA384_RSA_PKCS,
        Mechanism.SHA384_RSA_PKCS_PSS,
    ),
    "sha512": _HashSpec(
        bytes.fromhex("3051300d060960864801650304020305000440"),
        Mechanism.SHA512,
        pkcs11.MGF.SHA512,
        Mechanism.SHA512_RSA_PKCS,
        Mechanism.SHA512_RSA_PKCS_PSS,
    ),
}


def _hash_spec(algorithm: hashes.HashAlgorithm) -> _HashSpec:
    spec = _HASHES.get(algorithm.name)
    if spec is None:
        raise UnsupportedAlgorithm(f"PKCS#11 keys in vouch do not sign with {algorithm.name}")
    return spec


def _digest(data: Buffer, algorithm: hashes.HashAlgorithm | asym_utils.Prehashed) -> bytes:
    if isinstance(algorithm, asym_utils.Prehashed):
        if memoryview(data).nbytes != algorithm.digest_size:
            raise ValueError("the prehashed digest has the wrong length")
        return bytes(data)
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


class _TokenKey:
    """What every PKCS#11 key object shares: its locator and the pool of its token."""

    def __init__(self, pool: _TokenSessions, locator: _Locator) -> None:
        self.pool = pool
        self.locator = locator
        self._signing = f"signing with {locator.ref.describe()}"

    @property
    def ref(self) -> Pkcs11Ref:
        return self.locator.ref

    def sign(self, choose: Callable[[frozenset[Mechanism]], tuple[Mechanism, Any, bytes]]) -> bytes:
        def operation(pooled: _Session) -> bytes:
            mechanism, param, payload = choose(pooled.mechanisms)
            key = pooled.signing_key(self.locator)
            return key.sign(payload, mechanism=mechanism, mechanism_param=param)

        return self.pool.run(self._signing, operation)

    def refuse_export(self) -> NoReturn:
        raise KeyUnavailable(
            f"the private {self.ref.describe()} never leaves the token (not extractable)",
            hint="sign through the key object; back the key up with the HSM's own tools",
        )


class Pkcs11EllipticCurvePrivateKey(ec.EllipticCurvePrivateKey):
    """An ECDSA key in a token: the digest is made here, CKM_ECDSA signs it there."""

    def __init__(self, token_key: _TokenKey, public_key: ec.EllipticCurvePublicKey) -> None:
        self._token_key = token_key
        self._public_key = public_key

    @property
    def pkcs11_ref(self) -> Pkcs11Ref:
        return self._token_key.ref

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("PKCS#11 EC keys sign with ECDSA only")
        algorithm = signature_algorithm.algorithm
        # Refuses SHA-1 and the hashes vouch does not use, prehashed or not.
        _hash_spec(
            algorithm._algorithm if isinstance(algorithm, asym_utils.Prehashed) else algorithm
        )
        digest = _digest(data, algorithm)
        raw = self._token_key.sign(lambda _: (Mechanism.ECDSA, None, digest))
        half = len(raw) // 2
        if len(raw) % 2 or half == 0:
            raise KeyUnavailable(f"the token returned a malformed ECDSA signature ({len(raw)} B)")
        return asym_utils.encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise UnsupportedAlgorithm("vouch's PKCS#11 keys only sign")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._token_key.refuse_export()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._token_key.refuse_export()

    def __copy__(self) -> Pkcs11EllipticCurvePrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11EllipticCurvePrivateKey:
        return self

    def __repr__(self) -> str:
        return f"<Pkcs11EllipticCurvePrivateKey {self.pkcs11_ref}>"


class Pkcs11RSAPrivateKey(rsa.RSAPrivateKey):
    """An RSA key in a token: PKCS#1 v1.5 or PSS, hashed by the token (CKM_SHA256_RSA_PKCS...)
    when it can, else here (CKM_RSA_PKCS over a DigestInfo, CKM_RSA_PKCS_PSS over a digest)."""

    def __init__(self, token_key: _TokenKey, public_key: rsa.RSAPublicKey) -> None:
        self._token_key = token_key
        self._public_key = public_key

    @property
    def pkcs11_ref(self) -> Pkcs11Ref:
        return self._token_key.ref

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: asym_utils.Prehashed | hashes.HashAlgorithm | asym_utils.NoDigestInfo,
    ) -> bytes:
        message = bytes(data)
        if isinstance(algorithm, asym_utils.NoDigestInfo):
            if not isinstance(padding, PKCS1v15):
                raise UnsupportedAlgorithm("NoDigestInfo goes with PKCS1v15 only")
            return self._token_key.sign(lambda _: (Mechanism.RSA_PKCS, None, message))
        hashing: hashes.HashAlgorithm | asym_utils.Prehashed = algorithm
        prehashed = isinstance(hashing, asym_utils.Prehashed)
        hash_algorithm = (
            hashing._algorithm if isinstance(hashing, asym_utils.Prehashed) else hashing
        )
        spec = _hash_spec(hash_algorithm)
        if isinstance(padding, PKCS1v15):

            def pkcs1(mechanisms: frozenset[Mechanism]) -> tuple[Mechanism, Any, bytes]:
                if not prehashed and spec.pkcs1 in mechanisms:
                    return spec.pkcs1, None, message
                return Mechanism.RSA_PKCS, None, spec.digest_info + _digest(message, hashing)

            return self._token_key.sign(pkcs1)
        if isinstance(padding, PSS):
            param = (spec.hash_mechanism, spec.mgf, self._salt_length(padding, hash_algorithm))

            def pss(mechanisms: frozenset[Mechanism]) -> tuple[Mechanism, Any, bytes]:
                if not prehashed and spec.pss in mechanisms:
                    return spec.pss, param, message
                return Mechanism.RSA_PKCS_PSS, param, _digest(message, hashing)

            return self._token_key.sign(pss)
        raise UnsupportedAlgorithm(f"PKCS#11 RSA keys do not sign with {padding.name}")

    def _salt_length(self, pss: PSS, algorithm: hashes.HashAlgorithm) -> int:
        mgf = pss.mgf
        if not isinstance(mgf, MGF1) or mgf._algorithm.name != algorithm.name:
            raise UnsupportedAlgorithm("PKCS#11 RSA-PSS keys use MGF1 with the signing hash")
        salt = pss._salt_length
        if isinstance(salt, int):
            return salt
        if salt is PSS.DIGEST_LENGTH:
            return algorithm.digest_size
        if salt is PSS.MAX_LENGTH:
            return (self.key_size + 6) // 8 - algorithm.digest_size - 2
        raise ValueError("PSS salt length AUTO is for verifying only")

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise UnsupportedAlgorithm("vouch's PKCS#11 keys only sign")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        self._token_key.refuse_export()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._token_key.refuse_export()

    def __copy__(self) -> Pkcs11RSAPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11RSAPrivateKey:
        return self

    def __repr__(self) -> str:
        return f"<Pkcs11RSAPrivateKey {self.pkcs11_ref}>"


class Pkcs11Ed25519PrivateKey(ed25519.Ed25519PrivateKey):
    """An Ed25519 key in a token (CKM_EDDSA, pure EdDSA: the token sees the whole message)."""

    def __init__(self, token_key: _TokenKey, public_key: ed25519.Ed25519PublicKey) -> None:
        self._token_key = token_key
        self._public_key = public_key

    @property
    def pkcs11_ref(self) -> Pkcs11Ref:
        return self._token_key.ref

    def sign(self, data: Buffer) -> bytes:
        message = bytes(data)
        return self._token_key.sign(lambda _: (Mechanism.EDDSA, None, message))

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public_key

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._token_key.refuse_export()

    def private_bytes_raw(self) -> bytes:
        self._token_key.refuse_export()

    def __copy__(self) -> Pkcs11Ed25519PrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Pkcs11Ed25519PrivateKey:
        return self

    def __repr__(self) -> str:
        return f"<Pkcs11Ed25519PrivateKey {self.pkcs11_ref}>"


Pkcs11PrivateKey = Pkcs11EllipticCurvePrivateKey | Pkcs11RSAPrivateKey | Pkcs11Ed25519PrivateKey


# -- the backend ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pkcs11KeyInfo:
    """A private key in a token, as ``vouch keys list`` shows it."""

    ref: str
    label: str
    id: str  # hex
    key_type: str
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool


@dataclass(frozen=True)
class Pkcs11KeyTest:
    """One signature made in the token and verified here."""

    ref: str
    key_type: str
    sign_seconds: float


class Pkcs11KeyBackend:
    """Signing keys in PKCS#11 tokens, for ``pkcs11:`` key references."""

    scheme = "pkcs11"

    def __init__(
        self,
        module: Pkcs11Module | str | Path | None,
        pin: PinSource,
        *,
        pool_size: int = 4,
        wait: float = 5.0,
    ) -> None:
        """``module``: a shared ``Pkcs11Module``, or a path (``keys.pkcs11_module``; None
        searches SoftHSM2's usual paths). ``pool_size`` sessions per token at most; ``wait``
        seconds at most for a free session or a reconnection."""
        if pool_size < 1:
            raise ConfigError("the PKCS#11 session pool needs at least one session")
        self._owns_module = not isinstance(module, Pkcs11Module)
        self.module = module if isinstance(module, Pkcs11Module) else Pkcs11Module(module)
        self._pin = pin
        self._pool_size = pool_size
        self._wait = wait
        self._lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._pools: dict[str, _TokenSessions] = {}
        # (token, label, CKA_ID) of each pair this backend made: the only keys ``discard`` removes
        self._made: set[tuple[str, str, bytes]] = set()

    def _pool(self, token: str) -> _TokenSessions:
        with self._lock:
            pool = self._pools.get(token)
            if pool is None:
                pool = self._pools[token] = _TokenSessions(
                    self.module, token, self._pin, self._pool_size, self._wait
                )
            return pool

    def load(self, ref: KeyRef) -> CertificateIssuerPrivateKeyTypes:
        target = Pkcs11Ref.parse(ref)
        pool = self._pool(target.token)

        def find(pooled: _Session) -> tuple[Pkcs11Ref, CertificateIssuerPublicKeyTypes]:
            private = _find_private(pooled.session, target)
            label, key_id = private[Attribute.LABEL], private[Attribute.ID]
            found = Pkcs11Ref(target.token, label or None, bytes(key_id) or None)
            return found, _public_key(pooled.session, private)

        found, public_key = pool.run(f"loading {target.describe()}", find)
        return _key_object(pool, found, public_key)

    def generate(self, ref: KeyRef, key_type: VouchKeyType) -> CertificateIssuerPrivateKeyTypes:
        """A new key pair made in the token: sensitive, never extractable, a token object with
        the reference's label and a random CKA_ID (or the reference's ``id``)."""
        target = Pkcs11Ref.parse(ref)
        if target.label is None:
            raise ConfigError(f"a new PKCS#11 key needs a label: {ref};object=LABEL")
        label = target.label
        key_id = target.id or secrets.token_bytes(16)
        pool = self._pool(target.token)

        def make(pooled: _Session) -> CertificateIssuerPublicKeyTypes:
            session = pooled.session
            taken = [{Attribute.LABEL: label}] + ([{Attribute.ID: key_id}] if target.id else [])
            for template in taken:
                if list(session.get_objects(template)):
                    raise Conflict(
                        f"PKCS#11 token {target.token!r} already holds an object with that "
                        f"{'label' if Attribute.LABEL in template else 'id'} ({target})",
                        hint="vouch never replaces a key: choose another object= label",
                    )
            public, private = _generate_pair(session, pooled.mechanisms, key_type, label, key_id)
            try:
                flags = private.get_attributes(
                    [Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.TOKEN]
                )
                if (
                    not flags[Attribute.SENSITIVE]
                    or flags[Attribute.EXTRACTABLE]
                    or not flags[Attribute.TOKEN]
                ):
                    raise PolicyViolation(
                        "pkcs11.non-extractable",
                        f"PKCS#11 token {target.token!r} made an extractable, non-sensitive or "
                        "session key; it was destroyed",
                    )
                assert isinstance(private, pkcs11.SignMixin)
                return _public_key(session, private)
            except BaseException:
                # A pair nobody will get a reference to (or may use) does not stay in the token.
                _destroy_quietly(private, public)
                raise

        with self._generate_lock:  # no two generations racing for one label in this process
            public_key = pool.run(f"generating {target.describe()}", make)
            self._made.add((target.token, label, key_id))
        log.info("generated %s key %s in PKCS#11 token %r", key_type, label, target.token)
        return _key_object(pool, Pkcs11Ref(target.token, label, key_id), public_key)

    def discard(self, ref: KeyRef) -> bool:
        """Destroy the key pair at ``ref`` if this backend generated it (a step after generation
        failed and nothing refers to the key); True if it did. A key this backend did not make
        is never touched, whatever ``ref`` says: only the (token, label, CKA_ID) recorded at
        generation are destroyed."""
        target = Pkcs11Ref.parse(ref)
        with self._generate_lock:
            made = [
                m
                for m in self._made
                if m[0] == target.token
                and (target.label is None or m[1] == target.label)
                and (target.id is None or m[2] == target.id)
            ]
            if len(made) != 1:
                return False
            [(token, label, key_id)] = made
            self._pool(token).run(
                f"removing the new key {label!r}",
                lambda pooled: _destroy_pair(pooled.session, label, key_id),
            )
            self._made.discard((token, label, key_id))
        log.warning("removed the new key %s from PKCS#11 token %r (not used)", label, token)
        return True

    def key_objects(self, token: str, labels: Collection[str]) -> frozenset[KeyObject]:
        """The key objects (private and public) in ``token`` that carry one of ``labels``."""

        def scan(pooled: _Session) -> frozenset[KeyObject]:
            return frozenset(_key_objects(pooled.session, labels))

        return self._pool(token).run(f"listing the keys of token {token!r}", scan)

    def remove_new_objects(
        self, token: str, labels: Collection[str], before: frozenset[KeyObject]
    ) -> list[KeyObject]:
        """Destroy the key objects labelled with one of ``labels`` that are not in ``before``
        (taken with ``key_objects`` before a step that failed); the destroyed ones."""

        def remove(pooled: _Session) -> list[KeyObject]:
            removed: list[KeyObject] = []
            for found in sorted(set(_key_objects(pooled.session, labels)) - before):
                template = {
                    Attribute.CLASS: found.object_class,
                    Attribute.LABEL: found.label,
                    Attribute.ID: found.id,
                }
                for obj in list(pooled.session.get_objects(template)):
                    obj.destroy()
                removed.append(found)
            return removed

        return self._pool(token).run(f"removing new keys from token {token!r}", remove)

    def list_keys(self, token: str) -> list[Pkcs11KeyInfo]:
        """The private keys in ``token`` (logging in to see them), by label."""
        pool = self._pool(token)

        def scan(pooled: _Session) -> list[Pkcs11KeyInfo]:
            found: list[Pkcs11KeyInfo] = []
            template = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
            for private in list(pooled.session.get_objects(template)):
                attrs = private.get_attributes(
                    [
                        Attribute.LABEL,
                        Attribute.ID,
                        Attribute.SENSITIVE,
                        Attribute.EXTRACTABLE,
                        Attribute.ALWAYS_SENSITIVE,
                        Attribute.NEVER_EXTRACTABLE,
                    ]
                )
                kind = "unknown"
                if isinstance(private, pkcs11.SignMixin):
                    with suppress(VouchError, ValueError):
                        kind = key_type_of(_public_key(pooled.session, private))
                label, key_id = attrs[Attribute.LABEL], attrs[Attribute.ID]
                found.append(
                    Pkcs11KeyInfo(
                        ref=str(Pkcs11Ref(token, label or None, key_id or None)),
                        label=label,
                        id=bytes(key_id).hex(),
                        key_type=kind,
                        sensitive=bool(attrs[Attribute.SENSITIVE]),
                        extractable=bool(attrs[Attribute.EXTRACTABLE]),
                        always_sensitive=bool(attrs[Attribute.ALWAYS_SENSITIVE]),
                        never_extractable=bool(attrs[Attribute.NEVER_EXTRACTABLE]),
                    )
                )
            return sorted(found, key=lambda info: (info.label, info.id))

        return pool.run(f"listing the keys of token {token!r}", scan)

    def test(self, ref: KeyRef) -> Pkcs11KeyTest:
        """Sign a random message in the token and verify it here; raises if it does not verify."""
        key = self.load(ref)
        message = secrets.token_bytes(64)
        start = time.perf_counter()
        signature = sign_data(key, message)
        seconds = time.perf_counter() - start
        public_key = key.public_key()
        hash_algorithm = signature_hash_for(key)
        try:
            if isinstance(public_key, ec.EllipticCurvePublicKey):
                assert hash_algorithm is not None
                public_key.verify(signature, message, ec.ECDSA(hash_algorithm))
            elif isinstance(public_key, rsa.RSAPublicKey):
                assert hash_algorithm is not None
                public_key.verify(signature, message, padding.PKCS1v15(), hash_algorithm)
            elif isinstance(public_key, ed25519.Ed25519PublicKey):
                public_key.verify(signature, message)
            else:  # pragma: no cover - load returns only the three kinds above
                raise KeyUnavailable(f"cannot verify a {type(public_key).__name__}")
        except InvalidSignature as exc:
            raise KeyUnavailable(
                f"the token's signature with {Pkcs11Ref.parse(ref).describe()} does not verify "
                "against its public key"
            ) from exc
        return Pkcs11KeyTest(str(ref), key_type_of(public_key), seconds)

    def close(self) -> None:
        """Close every session (and, if this backend loaded the module, finalize it)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        if self._owns_module:
            self.module.close()


@dataclass(frozen=True, order=True)
class KeyObject:
    """A key object in a token, as far as telling it from the others goes."""

    label: str
    id: bytes
    object_class: ObjectClass

    def __str__(self) -> str:
        kind = "private" if self.object_class == ObjectClass.PRIVATE_KEY else "public"
        return f"{kind} key {self.label!r} (id {self.id.hex()})"


def _key_objects(session: pkcs11.Session, labels: Collection[str]) -> Iterator[KeyObject]:
    for label in labels:
        for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            template = {Attribute.CLASS: object_class, Attribute.LABEL: label}
            for obj in list(session.get_objects(template)):
                yield KeyObject(label, bytes(obj[Attribute.ID]), object_class)


def _destroy_pair(session: pkcs11.Session, label: str, key_id: bytes) -> None:
    for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
        template = {Attribute.CLASS: object_class, Attribute.LABEL: label, Attribute.ID: key_id}
        for obj in list(session.get_objects(template)):
            obj.destroy()


def _destroy_quietly(*objects: pkcs11.Object) -> None:
    for obj in objects:
        with suppress(p11.PKCS11Error):
            obj.destroy()


def _key_object(
    pool: _TokenSessions, ref: Pkcs11Ref, public_key: CertificateIssuerPublicKeyTypes
) -> Pkcs11PrivateKey:
    token_key = _TokenKey(pool, _Locator(ref, _spki(public_key)))
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return Pkcs11EllipticCurvePrivateKey(token_key, public_key)
    if isinstance(public_key, rsa.RSAPublicKey):
        return Pkcs11RSAPrivateKey(token_key, public_key)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return Pkcs11Ed25519PrivateKey(token_key, public_key)
    raise KeyUnavailable(f"{ref.describe()} has a key type vouch cannot sign with")


def _generate_pair(
    session: pkcs11.Session,
    mechanisms: frozenset[Mechanism],
    key_type: VouchKeyType,
    label: str,
    key_id: bytes,
) -> tuple[pkcs11.PublicKey, pkcs11.PrivateKey]:
    private_template = {
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.PRIVATE: True,
    }
    common: dict[str, Any] = {
        "id": key_id,
        "label": label,
        "store": True,
        "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
        "private_template": private_template,
    }
    if key_type in _EC_PARAMS:
        return session.generate_keypair(
            KeyType.EC,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: _EC_PARAMS[key_type]},
            **common,
        )
    if key_type.startswith("rsa-"):
        return session.generate_keypair(
            KeyType.RSA, int(key_type[4:]), mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN, **common
        )
    if key_type == "ed25519":
        needed = {Mechanism.EC_EDWARDS_KEY_PAIR_GEN, Mechanism.EDDSA}
        if not needed <= mechanisms:
            raise KeyUnavailable(
                f"this PKCS#11 token cannot make or use Ed25519 keys "
                f"(no {', '.join(sorted(m.name for m in needed - mechanisms))})",
                hint="choose ec-p256, ec-p384, rsa-3072 or rsa-4096",
            )
        return session.generate_keypair(
            KeyType.EC_EDWARDS,
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: _ED25519_PARAMS[0]},
            **common,
        )
    raise ConfigError(f"PKCS#11 keys cannot be of type {key_type}")
