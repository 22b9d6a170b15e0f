"""The audit log as a service: signed tree heads, proofs, verification, export and witnessing.

What the store appends (in the same transaction as each change) is checked here against three
things an attacker with write access to the database cannot all fake: the canonical bytes of each
entry (its stored leaf hash), the tree heads signed by the audit key (kept out of the database),
and the certificates and revocations themselves (each must have its entry, with the same DER).

Whatever checks a tree head is given the audit key it trusts: never one that came with the data
being checked (an export, a proof), since whoever rewrote the data could have re-signed it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)

from vouch.audit.entries import entry_bytes, format_time, head_bytes, parse_time
from vouch.audit.merkle import (
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from vouch.clock import Clock
from vouch.errors import AuthenticationFailed, BadInput, NotFound
from vouch.keys.verify import verify_signature
from vouch.store.audit import AuditStore, StoredEntry, TreeHead
from vouch.x509.serials import format_serial, parse_serial
from vouch.x509.signing import sign_data

Progress = Callable[[int], None]


def key_id(public_key: PublicKeyTypes) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def head_json(head: TreeHead) -> dict[str, Any]:
    return {
        "size": head.size,
        "root": head.root.hex(),
        "timestamp": format_time(head.timestamp),
        "key_id": head.key_id,
        "signature": base64.b64encode(head.signature).decode("ascii"),
    }


def head_from_json(data: dict[str, Any]) -> TreeHead:
    try:
        return TreeHead(
            size=int(data["size"]),
            root=bytes.fromhex(data["root"]),
            timestamp=parse_time(data["timestamp"]),
            key_id=str(data["key_id"]),
            signature=base64.b64decode(data["signature"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BadInput(f"not a vouch tree head: {exc}") from exc


def check_head_signature(head: TreeHead, public_key: PublicKeyTypes) -> bool:
    """Whether ``public_key`` signed ``head``, checked as ``sign_data`` signs with the audit key
    whatever its type (ECDSA with SHA-384 on P-384 and SHA-256 on P-256 and P-521, RSA PKCS#1
    v1.5 with SHA-256, pure Ed25519 and Ed448)."""
    if head.key_id != key_id(public_key):
        return False
    try:
        verify_signature(
            public_key, head.signature, head_bytes(head.size, head.root, head.timestamp)
        )
    except (AuthenticationFailed, BadInput):  # BadInput: a key type that cannot sign
        return False
    return True


@dataclass
class VerifyReport:
    entries: int = 0
    heads: int = 0
    certificates: int = 0
    problems: list[str] = field(default_factory=list)
    uncovered: int = 0  # entries after the newest signed head

    @property
    def ok(self) -> bool:
        return not self.problems


def recompute(entry: StoredEntry) -> bytes | None:
    """The entry's leaf hash from its content; None when the content is not even JSON."""
    try:
        data = json.loads(entry.data)
    except ValueError:
        return None
    return leaf_hash(entry_bytes(entry.seq, entry.at, entry.kind, entry.subject, data))


def verify_entries(
    entries: Iterable[StoredEntry],
    heads: list[TreeHead],
    public_key: PublicKeyTypes,
    report: VerifyReport,
    *,
    on_entry: Callable[[StoredEntry], None] | None = None,
    progress: Progress | None = None,
) -> CompactRange:
    """Recompute every leaf and the tree, and check every tree head against it, in one pass."""
    compact = CompactRange()
    pending = sorted(heads, key=lambda h: h.size)
    bad_signatures = [h for h in pending if not check_head_signature(h, public_key)]
    for head in bad_signatures:
        report.problems.append(
            f"tree head of size {head.size} ({format_time(head.timestamp)}) has a signature the "
            "audit key did not make: it was forged or altered"
        )
    pending = [h for h in pending if h not in bad_signatures]
    report.heads = len(heads)
    index = 0
    covered = 0  # the largest size a validly signed head that matches the log vouches for

    def check_heads_at(size: int) -> None:
        nonlocal index, covered
        while index < len(pending) and pending[index].size == size:
            head = pending[index]
            if head.root == compact.root():
                covered = max(covered, head.size)
            else:
                report.problems.append(
                    f"tree head of size {head.size} ({format_time(head.timestamp)}) does not match "
                    f"the log's first {head.size} entries: an entry before {head.size} was "
                    "changed, removed or reordered"
                )
            index += 1

    check_heads_at(0)
    for entry in entries:
        if entry.seq != compact.size:
            report.problems.append(
                f"audit log entry {compact.size} is missing (the next one is {entry.seq})"
            )
            return compact
        recomputed = recompute(entry)
        if recomputed != entry.leaf_hash:
            report.problems.append(
                f"audit log entry {entry.seq} ({entry.kind} {entry.subject}) was altered: its "
                "content does not hash to its recorded leaf"
            )
        compact.append(recomputed if recomputed is not None else entry.leaf_hash)
        report.entries += 1
        # Entries that still parse feed the cross-checks (an altered one is reported above).
        if on_entry is not None and recomputed is not None:
            try:
                on_entry(entry)
            except (KeyError, ValueError, TypeError):
                report.problems.append(
                    f"audit log entry {entry.seq} ({entry.kind} {entry.subject}) is not in the "
                    "shape its kind records"
                )
        check_heads_at(compact.size)
        if progress is not None and compact.size % 10_000 == 0:
            progress(compact.size)
    for head in pending[index:]:
        report.problems.append(
            f"tree head of size {head.size} ({format_time(head.timestamp)}) is beyond the log's "
            f"{compact.size} entries: entries were removed from the end"
        )
    report.uncovered = max(0, compact.size - covered)
    return compact


class AuditLog:
    def __init__(
        self,
        *,
        store: AuditStore,
        clock: Clock,
        key_loader: Callable[[], CertificateIssuerPrivateKeyTypes],
        public_key: Callable[[], PublicKeyTypes],
    ) -> None:
        self._store = store
        self._clock = clock
        self._key_loader = key_loader
        self._public_key = public_key
        self._key: CertificateIssuerPrivateKeyTypes | None = None

    @property
    def store(self) -> AuditStore:
        return self._store

    def public_key(self) -> PublicKeyTypes:
        return self._public_key()

    # -- tree heads ----------------------------------------------------------------------------

    def sign_head(self, *, if_older_than: dt.timedelta | None = None) -> TreeHead | None:
        """Sign the log's current head; with ``if_older_than``, only when the log grew since the
        newest head or that head is older than that (so a quiet log still gets fresh heads)."""
        compact = self._store.head()
        now = self._clock.now()
        latest = self._store.latest_tree_head()
        if (
            if_older_than is not None
            and latest is not None
            and latest.size == compact.size
            and now - latest.timestamp < if_older_than
        ):
            return None
        if self._key is None:
            self._key = self._key_loader()
        root = compact.root()
        signature = sign_data(self._key, head_bytes(compact.size, root, now))
        head = TreeHead(compact.size, root, now, key_id(self._key.public_key()), signature)
        self._store.add_tree_head(head)
        return head

    def latest_head(self) -> TreeHead:
        head = self._store.latest_tree_head()
        if head is None:
            head = self.sign_head()
            assert head is not None
        return head

    # -- proofs --------------------------------------------------------------------------------

    def prove_certificate(self, serial: str) -> dict[str, Any]:
        canonical = format_serial(parse_serial(serial))
        found = self._store.find("certificate.issued", canonical)
        if not found:
            raise NotFound(f"no issuance of serial {canonical} is in the audit log")
        return self.prove_index(found[0].seq)

    def prove_index(self, index: int) -> dict[str, Any]:
        if index < 0:
            raise BadInput("an entry's index is 0 or more")
        # Checked before anything is signed: anyone may ask (GET /audit/proof/inclusion), and
        # an index beyond the log must not make the CA sign and store a tree head per request.
        if index >= self._store.head().size:
            raise NotFound(f"entry {index} is not in the log yet")
        head = self.latest_head()
        if index >= head.size:
            # The entry is newer than the newest head: sign one that covers it (at most one per
            # growth of the log; the next request for it finds this head).
            head = self.sign_head() or head
        if index >= head.size:
            raise NotFound(f"entry {index} is not in the log yet")
        leaves = self._store.leaf_hashes(head.size)
        [entry] = list(self._store.entries(index, index + 1))
        return {
            "type": "inclusion",
            "index": index,
            "tree_size": head.size,
            "entry": base64.b64encode(
                entry_bytes(entry.seq, entry.at, entry.kind, entry.subject, json.loads(entry.data))
            ).decode("ascii"),
            "leaf_hash": leaves[index].hex(),
            "path": [h.hex() for h in inclusion_proof(index, leaves)],
            "head": head_json(head),
        }

    def prove_consistency(self, first: int, second: int | None = None) -> dict[str, Any]:
        head = self.latest_head()
        second = head.size if second is None else second
        if not 0 < first <= second:
            raise BadInput("a consistency proof needs 0 < FIRST <= SECOND")
        if second > self._store.head().size:
            raise NotFound(f"the log has fewer than {second} entries")
        if head.size != second:
            # Only a signed head vouches for the second root: without one, a proof between two
            # self-consistent roots anyone can compute proves nothing about this log.
            signed = [h for h in self._store.tree_heads() if h.size == second]
            if not signed:
                sizes = sorted({h.size for h in self._store.tree_heads() if h.size >= first})
                shown = ", ".join(str(size) for size in sizes[-5:]) or "none"
                raise NotFound(
                    f"no signed tree head covers exactly {second} entries; "
                    f"prove to the size of one (the newest: {shown})"
                )
            head = signed[-1]
        leaves = self._store.leaf_hashes(second)
        return {
            "type": "consistency",
            "first": first,
            "second": second,
            "first_root": root_of(leaves[:first]).hex(),
            "second_root": root_of(leaves).hex(),
            "path": [h.hex() for h in consistency_proof(first, leaves)],
            "head": head_json(head),
        }

    # -- verification --------------------------------------------------------------------------

    def verify(self, progress: Progress | None = None) -> VerifyReport:
        report = VerifyReport()
        issued: dict[tuple[str, str], bytes] = {}
        revoked: dict[tuple[str, str], tuple[str, str | None]] = {}
        created: dict[str, bytes] = {}

        def remember(entry: StoredEntry) -> None:
            if entry.kind == "certificate.issued":
                data = json.loads(entry.data)
                issued[(data["ca"], entry.subject)] = hashlib.sha256(
                    base64.b64decode(data["der"])
                ).digest()
            elif entry.kind == "certificate.revoked":
                data = json.loads(entry.data)
                revoked[(data["ca"], entry.subject)] = (data["reason"], data.get("revoked_at"))
            elif entry.kind == "ca.created":
                created[entry.subject] = hashlib.sha256(
                    base64.b64decode(json.loads(entry.data)["der"])
                ).digest()

        # closing(): verify may stop early, and the entries' server-side cursor must not leak.
        with closing(self._store.entries()) as entries:
            compact = verify_entries(
                entries,
                self._store.tree_heads(),
                self._public_key(),
                report,
                on_entry=remember,
                progress=progress,
            )
        try:
            head = self._store.head()
        except ValueError:
            report.problems.append("the log head row is inconsistent: the head row was altered")
        else:
            if report.ok and (head.size != compact.size or head.root() != compact.root()):
                report.problems.append(
                    f"the log head says {head.size} entries with another root than the "
                    f"{compact.size} entries recomputed: the head row was altered"
                )
        for ca, serial, der, reason, revoked_at in self._store.issued_certificates():
            report.certificates += 1
            digest = issued.pop((ca, serial), None)
            if digest is None and der is not None:
                # An intermediate's certificate is recorded by its ca.created entry.
                own = hashlib.sha256(der).digest()
                digest = own if own in created.values() else None
            if der is None or digest is None:
                report.problems.append(
                    f"certificate {serial} of CA {ca} has no issuance entry in the audit log"
                )
                continue
            if hashlib.sha256(der).digest() != digest:
                report.problems.append(
                    f"certificate {serial} of CA {ca} differs from the one its audit entry records"
                )
            logged = revoked.pop((ca, serial), None)
            is_revoked = reason is not None or revoked_at is not None
            if is_revoked and logged is None:
                report.problems.append(
                    f"certificate {serial} of CA {ca} is revoked ({reason}) but the audit log "
                    "has no revocation entry"
                )
            elif not is_revoked and logged is not None:
                report.problems.append(
                    f"the audit log revoked certificate {serial} of CA {ca} ({logged[0]}) but the "
                    "store says it is not revoked"
                )
            elif logged is not None:
                logged_reason, logged_time = logged
                if reason != logged_reason:
                    report.problems.append(
                        f"certificate {serial} of CA {ca} is revoked ({reason}) but the audit "
                        f"log says {logged_reason}"
                    )
                elif revoked_at is None or (
                    logged_time is not None and revoked_at.isoformat() != logged_time
                ):
                    shown = revoked_at.isoformat() if revoked_at else "none"
                    report.problems.append(
                        f"certificate {serial} of CA {ca} has revocation time {shown} but the "
                        f"audit log says {logged_time}"
                    )
        for ca, serial in issued:
            report.problems.append(
                f"the audit log records issuing {serial} by CA {ca}, but the store has no "
                "such certificate (deleted?)"
            )
        return report

    def export(self) -> Iterator[dict[str, Any]]:
        public_pem = self._public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        yield {"type": "audit-key", "public_key": public_pem.decode("ascii")}
        for entry in self._store.entries():
            yield {
                "type": "entry",
                "seq": entry.seq,
                "at": format_time(entry.at),
                "kind": entry.kind,
                "subject": entry.subject,
                "data": json.loads(entry.data),
                "leaf_hash": entry.leaf_hash.hex(),
            }
        for head in self._store.tree_heads():
            yield {"type": "tree-head", **head_json(head)}

    def witness(self, saved: TreeHead) -> list[str]:
        """Problems with a tree head saved earlier (empty: today's log extends it).

        Every leaf is recomputed from its entry's content, as ``verify`` does: the stored leaf
        hashes are only what the database says, and whoever edited an entry could leave them."""
        if not check_head_signature(saved, self._public_key()):
            return ["the saved tree head's signature is not from this log's audit key"]
        try:
            current = self._store.head()
        except ValueError:
            return ["the log head row is inconsistent: the head row was altered"]
        if saved.size > current.size:
            return [
                f"the saved tree head covers {saved.size} entries but the log now has "
                f"{current.size}: entries were removed"
            ]
        problems: list[str] = []
        compact = CompactRange()
        prefix = compact.root() if saved.size == 0 else None  # the root of the first saved.size
        # closing(): witness may stop early, and the entries' server-side cursor must not leak.
        with closing(self._store.entries(0, current.size)) as entries:
            for entry in entries:
                if entry.seq != compact.size:
                    problems.append(
                        f"audit log entry {compact.size} is missing (the next one is {entry.seq})"
                    )
                    return problems
                recomputed = recompute(entry)
                if recomputed != entry.leaf_hash:
                    problems.append(
                        f"audit log entry {entry.seq} ({entry.kind} {entry.subject}) was altered: "
                        "its content does not hash to its recorded leaf"
                    )
                compact.append(recomputed if recomputed is not None else entry.leaf_hash)
                if compact.size == saved.size:
                    prefix = compact.root()
        if compact.size != current.size:
            problems.append(
                f"audit log entry {compact.size} is missing (the log head row counts "
                f"{current.size} entries)"
            )
            return problems
        if prefix != saved.root:
            problems.append(
                f"the log's first {saved.size} entries no longer hash to the saved root: "
                "history was rewritten"
            )
        elif compact.root() != current.root():
            # The saved head holds; but the next head would be signed over the head row.
            problems.append(
                f"the log head row does not match the log's {current.size} entries: the head "
                "row was altered"
            )
        return problems


def check_proof(
    proof: dict[str, Any], public_key: PublicKeyTypes, *, old_head: TreeHead | None = None
) -> list[str]:
    """Verify an inclusion or consistency proof offline, given only the audit public key (and,
    for a consistency proof, ``old_head``: a signed tree head the checker saved earlier).

    A consistency proof's first root is whatever the prover wrote: unless it is compared with a
    head the checker already holds, the proof shows only that two roots are self-consistent,
    which anyone can compute for a rewritten log. So without ``old_head`` it is refused."""
    problems: list[str] = []
    try:
        kind = proof["type"]
        if kind == "inclusion":
            head = head_from_json(proof["head"])
            if not check_head_signature(head, public_key):
                problems.append("the tree head's signature does not verify with the audit key")
            leaf = bytes.fromhex(proof["leaf_hash"])
            if "entry" in proof and leaf_hash(base64.b64decode(proof["entry"])) != leaf:
                problems.append("the entry does not hash to the leaf hash")
            path = [bytes.fromhex(h) for h in proof["path"]]
            if int(proof["tree_size"]) != head.size or not verify_inclusion(
                int(proof["index"]), head.size, leaf, path, head.root
            ):
                problems.append("the inclusion proof does not lead to the tree head's root")
        elif kind == "consistency":
            path = [bytes.fromhex(h) for h in proof["path"]]
            first, second = int(proof["first"]), int(proof["second"])
            first_root = bytes.fromhex(proof["first_root"])
            second_root = bytes.fromhex(proof["second_root"])
            if not proof.get("head"):
                problems.append(
                    "the proof carries no signed tree head: nothing vouches for its second root"
                )
            else:
                head = head_from_json(proof["head"])
                if not check_head_signature(head, public_key):
                    problems.append("the tree head's signature does not verify with the audit key")
                if head.size != second or head.root != second_root:
                    problems.append("the tree head is not the proof's second tree")
            if old_head is None:
                problems.append(
                    "no tree head you saved vouches for the proof's first root: without one the "
                    "proof shows only that two roots are self-consistent (pass --old-head)"
                )
            else:
                if not check_head_signature(old_head, public_key):
                    problems.append(
                        "the saved tree head's signature does not verify with the audit key"
                    )
                if old_head.size != first or old_head.root != first_root:
                    problems.append(
                        f"the proof does not start at the saved tree head (size {old_head.size}):"
                        f" its first tree (size {first}) is another"
                    )
            if not verify_consistency(first, second, first_root, second_root, path):
                problems.append("the consistency proof does not hold")
        else:
            problems.append(f"unknown proof type {kind!r}")
    except (KeyError, ValueError, TypeError) as exc:
        problems.append(f"not a vouch proof: {exc}")
    return problems


@dataclass(frozen=True)
class Export:
    """An export's entries and tree heads, and the audit key it names (which proves nothing: a
    forger re-signs the heads with a key of their own and writes that key in)."""

    entries: list[StoredEntry]
    heads: list[TreeHead]
    named_key: PublicKeyTypes | None


def read_export(records: Iterable[dict[str, Any]]) -> Export:
    """Parse the records of ``AuditLog.export`` (one JSON object each)."""
    entries: list[StoredEntry] = []
    heads: list[TreeHead] = []
    named_key: PublicKeyTypes | None = None
    for number, record in enumerate(records, start=1):
        try:
            kind = record.get("type")
            if kind == "entry":
                entries.append(
                    StoredEntry(
                        seq=int(record["seq"]),
                        at=parse_time(record["at"]),
                        kind=str(record["kind"]),
                        subject=str(record["subject"]),
                        data=json.dumps(record["data"]),
                        leaf_hash=bytes.fromhex(record["leaf_hash"]),
                    )
                )
            elif kind == "tree-head":
                heads.append(head_from_json(record))
            elif kind == "audit-key":
                named_key = serialization.load_pem_public_key(record["public_key"].encode())
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (AttributeError, KeyError, ValueError, TypeError) as exc:
            raise BadInput(f"record {number} of the export is not a vouch audit record") from exc
    entries.sort(key=lambda e: e.seq)
    return Export(entries, heads, named_key)


def verify_export(
    export: Export, public_key: PublicKeyTypes, progress: Progress | None = None
) -> VerifyReport:
    """Verify an export without vouch's store: every leaf, the tree, every signed head, each
    head against ``public_key``: the key the verifier trusts, never one taken from the export."""
    report = VerifyReport()
    if export.named_key is not None and key_id(export.named_key) != key_id(public_key):
        report.problems.append(
            f"the export names the audit key SHA256:{key_id(export.named_key)}, not the trusted "
            f"SHA256:{key_id(public_key)}: its tree heads are checked with the trusted key"
        )
    if not export.heads:
        # Nothing the audit key signed: the entries could be anyone's, and "verified" would
        # vouch for nothing (an empty file, a cut-off copy).
        report.problems.append(
            "the export holds no signed tree head: nothing in it is vouched for by the audit key"
        )
    verify_entries(export.entries, export.heads, public_key, report, progress=progress)
    return report
