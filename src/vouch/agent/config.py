"""The agent's TOML file: which ACME CA, how to answer challenges, and the certificates to keep."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vouch.durations import parse_duration
from vouch.errors import BadInput, ConfigError, VouchError
from vouch.x509.keytypes import KeyType

DEFAULT_CONFIG = Path("/etc/vouch/agent.toml")
MAX_CONFIG_BYTES = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: str) -> dt.timedelta:
    try:
        return parse_duration(value)
    except VouchError as exc:
        raise ValueError(exc.message) from exc


class AcmeSettings(_Strict):
    directory: str
    # PEM bundle of the CAs to trust for the directory's HTTPS; the system's when unset.
    ca_bundle: Path | None = None
    account_key: Path
    contact: list[str] = Field(default_factory=list)
    # External account binding (RFC 8555 7.3.4): the key id and the base64url MAC key, the key
    # inline or (better) in a file readable only by the agent.
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    eab_hmac_key_file: Path | None = None

    @field_validator("directory")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("the ACME directory is an https:// URL")
        return value

    @model_validator(mode="after")
    def _eab(self) -> AcmeSettings:
        keys = (self.eab_hmac_key is not None) + (self.eab_hmac_key_file is not None)
        if keys > 1:
            raise ValueError("give eab_hmac_key or eab_hmac_key_file, not both")
        if (self.eab_kid is None) != (keys == 0):
            raise ValueError(
                "eab_kid and an EAB key (eab_hmac_key or eab_hmac_key_file) go together"
            )
        return self


class ApiSettings(_Strict):
    """vouch's REST API instead of ACME: a one-time token for the first certificate, then
    renewal by possession (mTLS with the current certificate)."""

    # The API's base URL, e.g. https://ca.example.com:8443/api/v1
    url: str
    ca_bundle: Path | None = None
    profile: str | None = None
    lifetime: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("the API URL is an https:// URL")
        return value.rstrip("/")


class ChallengeSettings(_Strict):
    type: Literal["http-01"] = "http-01"
    # Either answer on this address ("host:port", standalone) or write into a web server's root.
    listen: str | None = None
    webroot: Path | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ChallengeSettings:
        if (self.listen is None) == (self.webroot is None):
            raise ValueError(
                "set exactly one of challenge.listen (host:port) and challenge.webroot"
            )
        if self.listen is not None:
            listen_address(self.listen)
        return self


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not host:port: {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - all interfaces is the point


class AgentSettings(_Strict):
    # Where status.json lives (and nothing secret).
    state_dir: Path = Path("/var/lib/vouch-agent")
    # Renew when this fraction of the lifetime has passed, or earlier if the CA says so (ARI).
    renew_at: float = Field(default=2 / 3, gt=0, lt=1)
    # Failures back off exponentially with jitter between these, never past a third of the time
    # the certificate has left, so that several tries fit before it expires.
    retry_min: Annotated[str, Field()] = "30s"
    retry_max: Annotated[str, Field()] = "1h"
    # Certificates renewed at the same time, each on its own ACME connection.
    concurrency: int = Field(default=4, ge=1, le=64)

    @field_validator("retry_min", "retry_max")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        _duration(value)
        return value

    @property
    def retry_min_delta(self) -> dt.timedelta:
        return parse_duration(self.retry_min)

    @property
    def retry_max_delta(self) -> dt.timedelta:
        return parse_duration(self.retry_max)


class CertificateSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    names: list[str] = Field(min_length=1, max_length=100)
    key_type: KeyType = "ec-p256"
    # An ACME profile (draft-aaron-acme-profiles), sent when the CA advertises it.
    profile: str | None = None
    key_path: Path | None = None
    chain_path: Path | None = None
    # Key and full chain in one file, replaced by one rename: see docs/agent.md.
    combined_path: Path | None = None
    owner: str | None = None
    group: str | None = None
    # Of the files holding the key; the chain alone is 0644.
    mode: str = "0600"
    # Run after this certificate changed: an argument list, or a string split like a shell would.
    reload: list[str] | str | None = None
    # API mode only: where the one-time token for a first certificate (or one that can no longer
    # renew by possession) comes from: a file (read, then removed: a token is spent once used)
    # or a command that prints one (given the names as arguments).
    token_file: Path | None = None
    token_command: list[str] | str | None = None

    @field_validator("names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        cleaned = [n.strip().lower().rstrip(".") for n in value]
        if any(not n or any(c.isspace() for c in n) for n in cleaned):
            raise ValueError("names are DNS names or IP addresses without spaces")
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("a name is listed twice")
        return cleaned

    @field_validator("mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        try:
            mode = int(value, 8)
        except ValueError as exc:
            raise ValueError(f'mode is octal, e.g. "0640": {value!r}') from exc
        if mode & 0o007 or mode & ~0o777:
            raise ValueError("a private key file must not be readable by others (e.g. 0600, 0640)")
        return value

    @model_validator(mode="after")
    def _paths(self) -> CertificateSpec:
        if (self.key_path is None) != (self.chain_path is None):
            raise ValueError("key_path and chain_path go together")
        if self.key_path is None and self.combined_path is None:
            raise ValueError("give key_path and chain_path, combined_path, or both")
        paths = [p for p in (self.key_path, self.chain_path, self.combined_path) if p is not None]
        if len({p.resolve() for p in paths}) != len(paths):
            raise ValueError("key_path, chain_path and combined_path must be different files")
        return self

    @property
    def file_mode(self) -> int:
        return int(self.mode, 8)

    @property
    def certificate_path(self) -> Path:
        """The file the installed certificate is read back from."""
        path = self.chain_path or self.combined_path
        assert path is not None  # checked by _paths
        return path


class AgentConfig(_Strict):
    acme: AcmeSettings | None = None
    api: ApiSettings | None = None
    challenge: ChallengeSettings | None = None
    agent: AgentSettings = Field(default_factory=AgentSettings)
    certificate: list[CertificateSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_ca(self) -> AgentConfig:
        if (self.acme is None) == (self.api is None):
            raise ValueError("configure exactly one of [acme] and [api]")
        if self.acme is not None and self.challenge is None:
            raise ValueError("ACME needs a [challenge] section (listen or webroot)")
        return self

    @model_validator(mode="after")
    def _unique(self) -> AgentConfig:
        names = [c.name for c in self.certificate]
        if len(set(names)) != len(names):
            raise ValueError("two certificates have the same name")
        files = [
            p.resolve()
            for c in self.certificate
            for p in (c.key_path, c.chain_path, c.combined_path)
            if p is not None
        ]
        if len(set(files)) != len(files):
            raise ValueError("two certificates write the same file")
        return self


def load_agent_config(path: Path) -> AgentConfig:
    """Parse and check the whole file; every problem is one clear ConfigError."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read the agent configuration {path}: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise BadInput(f"the agent configuration {path} is larger than 1 MiB")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    return _relative_to(config, path.parent)


def _relative_to(config: AgentConfig, base: Path) -> AgentConfig:
    """Relative paths in the file are relative to the file, so a config directory can move."""

    def fix(path: Path | None) -> Path | None:
        if path is None:
            return None
        path = path.expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    acme = (
        None
        if config.acme is None
        else config.acme.model_copy(
            update={
                "ca_bundle": fix(config.acme.ca_bundle),
                "account_key": fix(config.acme.account_key),
                "eab_hmac_key_file": fix(config.acme.eab_hmac_key_file),
            }
        )
    )
    api = (
        None
        if config.api is None
        else config.api.model_copy(update={"ca_bundle": fix(config.api.ca_bundle)})
    )
    challenge = (
        None
        if config.challenge is None
        else config.challenge.model_copy(update={"webroot": fix(config.challenge.webroot)})
    )
    agent = config.agent.model_copy(update={"state_dir": fix(config.agent.state_dir)})
    certificates = [
        c.model_copy(
            update={
                "key_path": fix(c.key_path),
                "chain_path": fix(c.chain_path),
                "combined_path": fix(c.combined_path),
                "token_file": fix(c.token_file),
            }
        )
        for c in config.certificate
    ]
    return config.model_copy(
        update={
            "acme": acme,
            "api": api,
            "challenge": challenge,
            "agent": agent,
            "certificate": certificates,
        }
    )
