"""``vouch --server URL cert|ca ...``: the cert and ca commands acting on a remote vouch through
its REST API (docs/api.md), as an administrator with an API token, over TLS verified against the
root pinned by ``vouch bootstrap`` (docs/remote.md).

Remote mode is on with ``--server URL`` (or $VOUCH_SERVER), or when there is no local home but a
bootstrapped client configuration. Only the commands listed in ``REMOTE_COMMANDS`` work remotely;
any other is refused instead of quietly acting on a local home.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import typer

from vouch.cli.context import CliState, errors_to_exit, fail
from vouch.errors import (
    AuthenticationFailed,
    BadInput,
    ConfigError,
    Conflict,
    NotFound,
    Unavailable,
    VouchError,
)

if TYPE_CHECKING:  # imported when used: every command starts without loading httpx (or ssl)
    import ssl

    import httpx

META = "vouch.remote"
REMOTE_COMMANDS = {
    "cert": {"issue", "list", "show", "revoke"},
    "ca": {"list", "show"},
    "admin": {"provisioner"},
    "provisioner": {"add", "list", "remove"},  # vouch admin provisioner ...
}
TIMEOUT = 60.0
PAGE = 500


class RemoteRefused(VouchError):
    """The remote vouch's policy (or linter) refused the request."""

    category = "policy"


@dataclass(frozen=True)
class ClientConfig:
    """What ``vouch bootstrap`` saved: the CA's URL and its root, pinned by fingerprint."""

    path: Path
    ca_url: str
    fingerprint: str
    root: Path


@dataclass(frozen=True)
class Selection:
    """The global options that choose remote mode (read by the cert and ca commands)."""

    server: str | None
    token_file: Path | None


def client_config_path() -> Path:
    env = os.environ.get("VOUCH_CLIENT_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "vouch" / "client.toml"


def load_client_config(path: Path) -> ClientConfig | None:
    """The bootstrapped configuration at ``path``; None when there is none."""
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the client configuration {path}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    values = [data.get(k) for k in ("ca_url", "fingerprint", "root")]
    if not all(isinstance(v, str) and v for v in values):
        raise ConfigError(
            f"{path} needs ca_url, fingerprint and root",
            hint="run vouch bootstrap --ca-url URL --fingerprint SHA256 --force",
        )
    ca_url, fingerprint, root = (str(v) for v in values)
    root_path = Path(root).expanduser()
    return ClientConfig(
        path, ca_url, fingerprint, root_path if root_path.is_absolute() else path.parent / root
    )


def check_url(url: str) -> str:
    """A base URL for the API: https, or http to this machine only (a token must not travel
    in the clear); without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadInput(f"not an https URL: {url!r}", hint="e.g. https://ca.example.com:8443")
    if parts.query or parts.fragment:
        raise BadInput(f"the CA URL takes no query or fragment: {url!r}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise BadInput(
            f"refusing plain http to {parts.hostname}: credentials would cross the network "
            "in the clear",
            hint="use the server's https URL",
        )
    return url.rstrip("/")


def select(ctx: typer.Context, server: str | None, token_file: Path | None) -> None:
    """Record the remote options for the commands; refuse --server where it does not apply."""
    ctx.meta[META] = Selection(server, token_file)
    command = ctx.invoked_subcommand
    # Given on the command line, that is; $VOUCH_SERVER may stay set for the other commands.
    sources = [ctx.get_parameter_source(name) for name in ("server", "token_file")]
    given = any(source is not None and source.name == "COMMANDLINE" for source in sources)
    if given and command not in REMOTE_COMMANDS:
        fail(
            "--server and --token-file work with the cert, ca and admin provisioner commands, "
            f"not {command}",
            code=3,
        )


def guard(ctx: typer.Context, group: str) -> None:
    """In a cert or ca group: refuse, in remote mode, a command that only works locally."""
    if _remote_url(ctx) is None:
        return
    command = ctx.invoked_subcommand
    allowed = REMOTE_COMMANDS[group]
    if command not in allowed:
        fail(
            f"vouch {group} {command} works on a local home, not on a remote vouch",
            hint=f"remotely: vouch {group} {', '.join(sorted(allowed))}",
            code=3,
        )


def client(ctx: typer.Context, *, token: bool = True) -> RemoteVouch | None:
    """The remote vouch to act on, or None for a local home."""
    url = _remote_url(ctx)
    if url is None:
        return None
    selection: Selection = ctx.meta[META]
    with errors_to_exit():
        base = check_url(url)
        root = None
        if base.startswith("https:"):
            config = load_client_config(client_config_path())
            if config is None:
                raise ConfigError(
                    "no root is pinned for this client",
                    hint="run vouch bootstrap --ca-url URL --fingerprint SHA256 first",
                )
            root = config.root
        secret = _token(selection.token_file) if token else None
        return RemoteVouch(base, root=root, token=secret)


def _remote_url(ctx: typer.Context) -> str | None:
    selection: Selection | None = ctx.meta.get(META)
    if selection is None:
        return None
    if selection.server is not None:
        return selection.server
    state: CliState = ctx.find_root().obj
    if (state.home / "vouch.toml").exists():
        return None
    # No local home but a bootstrapped CA: the commands go there (as step's do).
    with errors_to_exit():
        config = load_client_config(client_config_path())
    return None if config is None else config.ca_url


def _token(path: Path | None) -> str:
    if path is not None:
        try:
            if path.stat().st_mode & 0o077:
                raise ConfigError(
                    f"the token file {path} is readable by others", hint=f"chmod 600 {path}"
                )
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the token file {path}") from exc
    else:
        value = os.environ.get("VOUCH_TOKEN", "").strip()
    if not value:
        raise AuthenticationFailed(
            "this needs an administrator's API token",
            hint="pass --token-file FILE or set VOUCH_TOKEN (vouch admin token new, on the CA)",
        )
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(root: Path) -> ssl.SSLContext:
    import ssl

    try:
        return ssl.create_default_context(cafile=str(root))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot read the pinned root {root}",
            hint="run vouch bootstrap --ca-url URL --fingerprint SHA256 --force",
        ) from exc


class RemoteVouch:
    """The API of one remote vouch; its answers as data, its refusals as vouch errors."""

    def __init__(self, url: str, *, root: Path | None, token: str | None) -> None:
        import httpx

        self.url = url
        headers = {"accept": "application/json"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=f"{url}/api/v1",
            verify=tls_context(root) if root is not None else True,
            headers=headers,
            timeout=TIMEOUT,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise describe_transport_error(exc, self.url) from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 204 or (response.is_success and data is not None):
            return data
        raise _refusal(response.status_code, data if isinstance(data, dict) else {})


def describe_transport_error(exc: httpx.HTTPError, url: str) -> VouchError:
    import ssl

    import httpx

    if _caused_by(exc, ssl.SSLCertVerificationError):
        return AuthenticationFailed(
            f"the TLS certificate of {url} does not chain to the pinned root",
            hint="is this the CA you bootstrapped? (vouch bootstrap ... --force to trust another)",
        )
    if isinstance(exc, httpx.TimeoutException):
        return Unavailable(f"{url} did not answer in time")
    return Unavailable(f"cannot reach {url}", hint="check the URL and that vouch serve runs")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _refusal(status: int, problem: dict[str, Any]) -> VouchError:
    message = str(problem.get("message") or f"the server answered HTTP {status}")[:500]
    hint = problem.get("hint") if isinstance(problem.get("hint"), str) else None
    reason = problem.get("error")
    if status == 400:
        return BadInput(message, hint=hint)
    if status in (401, 429) or (status == 403 and reason in ("permission", "names")):
        return AuthenticationFailed(message, hint=hint)
    if status == 403:
        return RemoteRefused(message, hint=hint)
    if status == 404:
        return NotFound(message, hint=hint)
    if status == 409:
        return Conflict(message, hint=hint)
    if status >= 500:
        return Unavailable(message, hint=hint)
    return VouchError(message, hint=hint)


# -- the commands ------------------------------------------------------------------------------


def cert_issue(
    remote: RemoteVouch,
    *,
    csr: Path,
    profile: str | None,
    lifetime: str | None,
    ca: str | None,
    cn: bool,
    out: Path | None,
) -> None:
    from vouch.fsutil import atomic_write, probe_writable, read_limited
    from vouch.x509.csr import MAX_CSR_BYTES

    with errors_to_exit():
        data = read_limited(csr, MAX_CSR_BYTES, "CSR file")
        if out is not None:
            probe_writable(out)
        text = data.decode("ascii") if b"-----BEGIN" in data else base64.b64encode(data).decode()
        body = {"csr": text, "profile": profile, "lifetime": lifetime, "ca": ca, "common_name": cn}
        issued = remote.call(
            "POST", "/certificates", json={k: v for k, v in body.items() if v is not None}
        )
        chain = str(issued["chain"])
        if out is not None:
            try:
                atomic_write(out, chain.encode("ascii"))
            except VouchError as exc:
                exc.message = f"certificate {issued['serial']} was issued, but {exc.message}"
                exc.hint = (
                    f"fetch it with: vouch --server {remote.url} cert show {issued['serial']}"
                )
                raise
    if out is None:
        sys.stdout.write(chain)
    else:
        print(f"Issued {issued['serial']} ({issued['profile']}) -> {out}", file=sys.stderr)


def cert_list(
    remote: RemoteVouch,
    *,
    expiring: str | None,
    status: str | None,
    ca: str | None,
    profile: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    from vouch.cli.render import print_json, print_table
    from vouch.durations import parse_duration

    with errors_to_exit():
        params: dict[str, str | int] = {"limit": PAGE}
        for key, value in (("ca", ca), ("profile", profile), ("name", name), ("status", status)):
            if value is not None:
                params[key] = value
        if expiring is not None:
            soon = dt.datetime.now(dt.UTC) + parse_duration(expiring)
            params["expires_before"] = soon.isoformat()
            params["status"] = "valid"
        rows: list[dict[str, Any]] = []
        while True:
            page = remote.call("GET", "/certificates", params=params)
            rows += [_certificate(item) for item in page["items"]]
            if page.get("next_cursor") is None:
                break
            params["cursor"] = int(page["next_cursor"])
    if as_json:
        print_json(rows)
        return
    print_table(
        f"Certificates ({len(rows)}) at {remote.url}",
        ["serial", "ca", "profile", "names", "not after", "status"],
        [
            [r["serial"], r["ca"], r["profile"], ", ".join(r["names"]), r["not_after"], r["status"]]
            for r in rows
        ],
    )


def cert_show(remote: RemoteVouch, *, serial: str, ca: str | None, as_json: bool) -> None:
    from vouch.cli.render import print_fields, print_json

    with errors_to_exit():
        params = {"ca": ca} if ca is not None else {}
        data = _certificate(remote.call("GET", f"/certificates/{quote(serial)}", params=params))
    if as_json:
        print_json(data)
    else:
        print_fields(f"Certificate {data['serial']}", data)


def cert_revoke(
    remote: RemoteVouch,
    *,
    serial: str,
    reason: str,
    invalidity_date: dt.datetime | None,
    ca: str | None,
) -> None:
    with errors_to_exit():
        body: dict[str, str] = {"reason": reason}
        if ca is not None:
            body["ca"] = ca
        if invalidity_date is not None:
            body["invalidity_date"] = invalidity_date.isoformat()
        revoked = remote.call("POST", f"/certificates/{quote(serial)}/revoke", json=body)
    at = _time(revoked["revoked_at"])
    print(
        f"Revoked {revoked['serial']} of CA {revoked['ca']} ({revoked['reason']}) at "
        f"{at:%Y-%m-%d %H:%M:%S} UTC"
    )
    if revoked.get("key_blocked"):
        print("Its public key is blocked: vouch will sign nothing more for it.")


def ca_list(remote: RemoteVouch, *, as_json: bool) -> None:
    from vouch.cli.render import print_json, print_table

    with errors_to_exit():
        found = remote.call("GET", "/cas")
    rows = _authorities(found)
    if as_json:
        print_json(rows)
        return
    print_table(
        f"Certificate authorities at {remote.url}",
        ["name", "role", "status", "serial", "not after", "key"],
        [
            [r["name"], r["role"], r["status"], r["serial"], r["not_after"], r["key_type"]]
            for r in rows
        ],
    )


def ca_show(remote: RemoteVouch, *, name: str, as_json: bool, pem: bool) -> None:
    from vouch.cli.render import print_fields, print_json

    with errors_to_exit():
        found = remote.call("GET", f"/cas/{quote(name, safe='')}")
        everyone = remote.call("GET", "/cas")
    if pem:
        typer.echo(str(found["certificate"]), nl=False)
        return
    data = next(r for r in _authorities([*everyone, found]) if r["name"] == found["name"])
    links = found.get("links") or {}
    data |= {"crl": links.get("crl"), "ocsp": links.get("ocsp")}
    if as_json:
        print_json(data)
    else:
        print_fields(f"CA {found['name']}", data)


# -- rendering, as the local commands do ----------------------------------------------------------


def provisioner_add(remote: RemoteVouch, body: dict[str, Any]) -> None:
    with errors_to_exit():
        created = remote.call("POST", "/provisioners", json=body)
    print(f"Provisioner {created['name']} created at {remote.url}: every node serves it.")
    print(
        "Mint its tokens where its private key is, e.g. "
        f"vouch token NAME --provisioner {created['name']} --key-file KEY"
    )


def provisioner_list(remote: RemoteVouch) -> list[dict[str, Any]]:
    with errors_to_exit():
        found = remote.call("GET", "/provisioners")
    return list(found)


def provisioner_remove(remote: RemoteVouch, name: str) -> None:
    with errors_to_exit():
        remote.call("DELETE", f"/provisioners/{quote(name, safe='')}")
    print(f"Provisioner {name} removed at {remote.url}: its tokens are refused from now on.")


def _certificate(item: dict[str, Any]) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = item.get("certificate")
    sha256 = None
    if isinstance(pem, str):
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
        sha256 = hashlib.sha256(der).hexdigest().upper()
    return {
        "serial": item["serial"],
        "ca": item["ca"],
        "profile": item["profile"],
        "names": list(item["names"]),
        "subject": item["subject"],
        "key_type": item["key_type"],
        "not_before": _iso(item.get("not_before")),
        "not_after": _iso(item.get("not_after")),
        "status": item["status"],
        "revoked_at": _iso(item.get("revoked_at")),
        "revocation_reason": item.get("revocation_reason"),
        "sha256": sha256,
    }


def _authorities(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CAs as ``vouch ca list`` shows them; a CA's parent is the CA whose certificate comes
    next in its chain."""
    from cryptography import x509

    by_der: dict[bytes, str] = {}
    for item in found:
        by_der[_der(item["certificate"])] = item["name"]
    rows: dict[str, dict[str, Any]] = {}
    for item in found:
        der = _der(item["certificate"])
        chain = item.get("chain") or []
        parent = by_der.get(_der(chain[1])) if len(chain) > 1 else None
        certificate = x509.load_der_x509_certificate(der)
        rows[item["name"]] = {
            "name": item["name"],
            "role": item["role"],
            "status": item["status"],
            "serial": item["serial"],
            "parent": parent,
            "not_before": _iso(item.get("not_before")),
            "not_after": _iso(item.get("not_after")),
            "key_type": item["key_type"],
            "subject": certificate.subject.rfc4514_string(),
            "sha256": hashlib.sha256(der).hexdigest().upper(),
        }
    return list(rows.values())


def _der(pem: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def _time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _iso(text: str | None) -> str | None:
    from vouch.cli.render import iso

    return None if text is None else iso(_time(text))
