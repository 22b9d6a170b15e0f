"""ACME problem documents (RFC 8555 6.7, RFC 7807) as exceptions the HTTP face renders."""

from __future__ import annotations

from typing import Any

NS = "urn:ietf:params:acme:error:"


class AcmeProblem(Exception):
    """An error a client sees as ``application/problem+json`` with an ACME error type."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int = 400,
        subproblems: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.subproblems = subproblems
        self.retry_after = retry_after

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": NS + self.kind,
            "detail": self.detail,
            "status": self.status,
        }
        if self.subproblems:
            body["subproblems"] = self.subproblems
        return body


def malformed(detail: str) -> AcmeProblem:
    return AcmeProblem("malformed", detail)


def unauthorized(detail: str) -> AcmeProblem:
    return AcmeProblem("unauthorized", detail, status=403)


def bad_nonce(detail: str = "the nonce is unknown, used, or expired") -> AcmeProblem:
    return AcmeProblem("badNonce", detail)


def account_does_not_exist(detail: str = "no account with this key") -> AcmeProblem:
    return AcmeProblem("accountDoesNotExist", detail)


def not_found(detail: str) -> AcmeProblem:
    return AcmeProblem("malformed", detail, status=404)
