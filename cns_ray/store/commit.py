"""How a write becomes visible: claim a version number, write its files create-once, move the head conditionally.

Every step is idempotent, so a lost response (the request was done, its reply never came, botocore retried) never
turns a success into a failure or destroys a committed version:

- the claim ``versions/{v}/commit.json`` holds this commit's id and a lease; meeting it again is this commit's claim;
- version files and the version record are create-once; meeting the same bytes is this commit's write;
- a head move that fails (412 on the retry, or no reply at all) re-reads the head: the commit landed iff its version
  is in the head's ``committed`` set (a number only this commit holds), a rollback iff its move id is in the head's
  recent moves. Then it is a success. Only a commit proven not to have landed removes its own (invisible) files:
  nothing the head references is ever deleted.

Tenants whose store predates head.json (one ``manifest.json``) are migrated on their first write: a record per
version, then head.json created if absent; the old manifest is then ignored (``cns store gc`` removes it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from cns_ray.errors import CNSError, CommitConflictError, NotFoundError, StoreError
from cns_ray.store import codec
from cns_ray.store.backend import KeyExists, PreconditionFailed
from cns_ray.store.checks import check_state
from cns_ray.store.head import HeadRecord, ranges_has, ranges_text
from cns_ray.store.manifest import CONES_FILE, Manifest, VersionEntry, file_digest, now_iso
from cns_ray.store.names import validate_name
from cns_ray.store.state import TenantState

if TYPE_CHECKING:
    from cns_ray.store.store import ConceptStore

log = logging.getLogger(__name__)

CLAIM_TRIES = 20
LEASE_S = 900.0
"""How long an uncommitted version folder counts as an in-flight commit (gc leaves it alone until then)."""
MARKER = "commit.json"
RECORD = "version.json"


def head_for_write(store: "ConceptStore", tenant: str) -> tuple[HeadRecord | None, str | None]:
    """The tenant's head record and its tag, migrating a legacy manifest first."""
    rec, tag, legacy = store._read_head(tenant, cached=False)
    if legacy is None:
        return rec, tag
    migrate(store, tenant, legacy)
    rec, tag, legacy = store._read_head(tenant, cached=False)
    assert legacy is None
    return rec, tag


def migrate(store: "ConceptStore", tenant: str, m: Manifest) -> None:
    """Legacy manifest -> one record per version + head.json (idempotent: every migrator writes the same bytes)."""
    b = store._backend
    for e in m.versions:
        b.put_once(store._vkey(tenant, e.version, RECORD), e.to_bytes(tenant))
    rec = HeadRecord.from_manifest(m)
    try:
        b.replace(store._tkey(tenant, "head.json"), rec.to_bytes(), None)
        log.info("tenant %s: migrated %d versions from manifest.json to head.json + version records", tenant, len(m.versions))
    except PreconditionFailed:
        pass  # another process migrated (or committed) first


def commit_state(store: "ConceptStore", tenant: str, state: TenantState, parent: int | None, message: str, action: str) -> int:
    validate_name(tenant, "tenant")
    check_state(tenant, state)
    head, tag = head_for_write(store, tenant)
    found = None if head is None else head.head
    if found != parent:
        raise conflict(tenant, parent, found, None)
    head = head or HeadRecord(tenant=tenant)
    commit_id = uuid.uuid4().hex
    v = _claim(store, tenant, head.top() + 1, commit_id)
    concepts = [c if c.version_added is not None else replace(c, version_added=v) for c in state.concepts]
    files = {"delta.parquet": codec.encode_delta(state.delta, store.cfg.value_dtype),
             "tokens.parquet": codec.encode_tokens(state.tokens), "concepts.parquet": codec.encode_concepts(concepts)}
    if codec.has_cones(concepts):  # only then: versions without Cones concepts keep the three-file layout
        files[CONES_FILE] = codec.encode_cones(concepts)
    for f in files:
        try:
            store._backend.put_once(store._vkey(tenant, v, f), files[f])
        except KeyExists as e:
            raise StoreError(f"{store.uri('tenants', tenant, 'versions', str(v), f)} already holds other bytes although this "
                             f"commit claimed version {v}; nothing was made visible; run `cns store gc` and retry") from e
    entry = VersionEntry(
        version=v, parent=parent, created_at=now_iso(), message=message, base_id=state.base_id,
        concepts=[c.name for c in concepts], tokens=sorted(state.tokens), nnz=state.delta.nnz,
        value_dtype=store.cfg.value_dtype, files={f: file_digest(b) for f, b in files.items()}, commit_id=commit_id,
    )
    store._backend.put_once(store._vkey(tenant, v, RECORD), entry.to_bytes(tenant))
    new = head.moved(v, action, commit_id, now_iso())
    if not move_head(store, tenant, new, tag, lambda cur: ranges_has(cur.committed, v)):
        now, _, _ = store._read_head(tenant, cached=False)
        remove_version_files(store, tenant, v)  # proven not committed: the number was this commit's alone
        raise conflict(tenant, parent, None if now is None else now.head, v)
    log.info("tenant %s: committed version %d (parent %s, %d entries): %s", tenant, v, parent, state.delta.nnz, message)
    return v


def rollback_head(store: "ConceptStore", tenant: str, version: int) -> None:
    head, tag = head_for_write(store, tenant)
    if head is None:
        raise NotFoundError(f"tenant {tenant!r} has no versions in store {store.uri()}: nothing to roll back")
    if not ranges_has(head.live, version):
        gone = " (it was removed: `cns store gc --keep-last` or `cns concepts purge`)" if ranges_has(head.committed, version) else ""
        raise NotFoundError(f"tenant {tenant!r} has no version {version}{gone} (versions: {ranges_text(head.live)}); "
                            "pick one from `cns concepts history`")
    store.load(tenant, version)  # refuse to point the head at a damaged version
    if head.head == version:
        return
    move_id = uuid.uuid4().hex
    if not move_head(store, tenant, head.moved(version, "rollback", move_id, now_iso()), tag, lambda cur: cur.has_move(move_id)):
        now, _, _ = store._read_head(tenant, cached=False)
        raise conflict(tenant, head.head, None if now is None else now.head, None)
    log.info("tenant %s: head %s -> %s (rollback)", tenant, head.head, version)


def move_head(store: "ConceptStore", tenant: str, new: HeadRecord, tag: str | None, landed: Callable[[HeadRecord], bool]) -> bool:
    """Replace the head conditionally. True if this move is in effect (directly, or found after a failed reply);
    False if another writer moved the head first; StoreError if the store cannot tell."""
    key = store._tkey(tenant, "head.json")
    try:
        store._backend.replace(key, new.to_bytes(), tag)
        return True
    except PreconditionFailed:
        why: Exception | None = None
    except StoreError as e:
        why = e
    try:
        cur, _, _ = store._read_head(tenant, cached=False)
    except CNSError as e:
        raise StoreError(f"tenant {tenant!r}: the head move's outcome is unknown ({why or 'precondition failed'}) and the "
                         f"head cannot be re-read ({e}); check with `cns concepts history` before retrying") from e
    if cur is not None and landed(cur):
        log.warning("tenant %s: the head move's reply was lost (%s), but the head shows it landed: success", tenant,
                    why or "a retry met its own write")
        return True
    if why is not None:
        raise StoreError(f"tenant {tenant!r}: the head did not move ({why}); nothing was made visible; retry") from why
    return False


def remove_version_files(store: "ConceptStore", tenant: str, v: int) -> None:
    """Delete one version folder's files, the claim marker last. Callers make sure no head references ``v``."""
    keys = store._backend.list_files(store._tkey(tenant, "versions", str(int(v))))
    for k in sorted(keys, key=lambda k: k.endswith("/" + MARKER)):
        try:
            store._backend.delete(k)
        except CNSError as e:
            log.warning("could not remove %s: %s", k, e)


def _claim(store: "ConceptStore", tenant: str, v: int, commit_id: str) -> int:
    """Create ``versions/{v}/commit.json`` (this commit's id + a lease) create-once; taken numbers are skipped."""
    marker = json.dumps({"commit_id": commit_id, "started_at": time.time(), "lease_until": time.time() + LEASE_S,
                         "host": socket.gethostname(), "pid": os.getpid()}, sort_keys=True).encode()
    for _ in range(CLAIM_TRIES):
        try:
            store._backend.put_once(store._vkey(tenant, v, MARKER), marker)
            others = [k for k in store._backend.list_files(store._tkey(tenant, "versions", str(v))) if not k.endswith(MARKER)]
            if not others:
                return v
            store._backend.delete(store._vkey(tenant, v, MARKER))  # a leftover without a marker holds this number
        except KeyExists:
            pass
        taken = [int(d) for d in store._backend.list_dirs(store._tkey(tenant, "versions")) if d.isdigit()]
        v = max([v, *taken]) + 1
    raise StoreError(f"tenant {tenant!r}: could not claim a version number after {CLAIM_TRIES} tries (many concurrent "
                     "committers?); retry")


def read_marker(data: bytes) -> dict:
    try:
        d = json.loads(data)
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def conflict(tenant: str, expected: int | None, found: int | None, v: int | None) -> CommitConflictError:
    what = f"version {v} was not made visible" if v is not None else "nothing was written"
    return CommitConflictError(
        f"tenant {tenant!r}: commit expected head {expected}, found head {found}: another writer moved the head first "
        f"({what}). Fix: reload the tenant's state (store.load / store.head), apply your change to it again and "
        f"commit with parent={found}"
    )
