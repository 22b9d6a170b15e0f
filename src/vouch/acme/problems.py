"""ACME problem documents (RFC 8555 6.7, RFC 7807) as exceptions the HTTP face renders.

A problem carries its ACME error type and a client-safe detail, never an HTTP status: the face
(``server.acme``) chooses the status from the type, once.
"""

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
        subproblems: list[dict[str, Any]] | None = None,
        retry_after: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """``fields``: members the type itself calls for (badSignatureAlgorithm: algorithms)."""
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.subproblems = subproblems
        self.retry_after = retry_after
        self.fields = fields

    def document(self) -> dict[str, Any]:
        """The problem as stored in an order or challenge (the face adds the HTTP status)."""
        body: dict[str, Any] = {"type": NS + self.kind, "detail": self.detail}
        if self.subproblems:
            body["subproblems"] = self.subproblems
        if self.fields:
            body.update(self.fields)
        return body


def bad_signature_algorithm(detail: str, accepted: tuple[str, ...]) -> AcmeProblem:
    """RFC 8555 6.2: this problem lists the algorithms the server accepts."""
    return AcmeProblem("badSignatureAlgorithm", detail, fields={"algorithms": list(accepted)})


def malformed(detail: str) -> AcmeProblem:
    return AcmeProblem("malformed", detail)


def unauthorized(detail: str) -> AcmeProblem:
    return AcmeProblem("unauthorized", detail)


def rate_limited(detail: str, retry_after: int) -> AcmeProblem:
    return AcmeProblem("rateLimited", detail, retry_after=max(1, retry_after))
