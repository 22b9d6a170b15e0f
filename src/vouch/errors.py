"""The errors vouch raises, by domain category.

Each carries a message that is safe to show to whoever asked (no secrets, no internals) and an
optional hint saying what to do. Faces map the category to an HTTP status or an exit code, once;
the internal cause rides on ``__cause__`` and is logged, never shown.
"""

from __future__ import annotations

from typing import ClassVar


class VouchError(Exception):
    """Base of every error vouch raises on purpose."""

    category: ClassVar[str] = "internal"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class BadInput(VouchError):
    """The input could not be understood: malformed PEM/DER, a bad CSR signature, a bad name."""

    category = "bad-input"


class PolicyViolation(VouchError):
    """The input is well formed but a policy rule refuses it. ``rule`` names the rule."""

    category = "policy"

    def __init__(self, rule: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{message} [rule: {rule}]", hint=hint)
        self.rule = rule


class LintFailure(VouchError):
    """A certificate about to be issued failed the linter; nothing was signed."""

    category = "lint"

    def __init__(self, findings: list[str]) -> None:
        shown = "; ".join(findings[:5]) + (
            f" (+{len(findings) - 5} more)" if len(findings) > 5 else ""
        )
        super().__init__(
            f"refused by the certificate linter: {shown}",
            hint="fix the profile or request, or list the finding in issuance.lint_allow",
        )
        self.findings = findings


class NotFound(VouchError):
    category = "not-found"


class Conflict(VouchError):
    """The thing already exists or is in a state that forbids the action."""

    category = "conflict"


class AuthenticationFailed(VouchError):
    """A passphrase, PIN or credential was wrong."""

    category = "authentication"


class ConfigError(VouchError):
    category = "config"


class Unavailable(VouchError):
    """A dependency (database, key store, disk) cannot serve now; retrying later may work."""

    category = "unavailable"


class StoreError(Unavailable):
    """The database refused or failed; the operation left nothing half-written."""


class KeyUnavailable(Unavailable):
    """A key backend cannot load or use the key."""
