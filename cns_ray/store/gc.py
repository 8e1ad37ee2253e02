"""Retention: ``cns store gc`` removes what no reader can reach, and old versions by a policy.

What it removes, each only when it is safe:

- **orphan version folders**: no head keeps them and their commit's lease (``commit.json``) has ended, so no
  commit is still writing them (folders without a marker, from older cns-ray: untouched for ``grace_s``);
- **temporary files** of interrupted local writes (``.NAME.tmp-*``) untouched for ``grace_s``;
- **checkpoints of failed learning runs** (``checkpoints/{tenant}/{run}/``) untouched for ``grace_s`` (a running
  job writes its checkpoints often; a successful run removes its own);
- a legacy ``manifest.json`` once the tenant has a ``head.json``;
- with ``keep_last=N``, **old versions**: every kept version except the N newest, the head, and the head's parent
  (what ``rollback`` may need: the last N states and a one-step undo of the head). They leave the head's kept set
  first (a conditional head write, so a concurrent rollback or commit either sees them gone or makes gc retry),
  then their files are deleted. Their numbers stay in ``committed``; a rollback to one says it was removed.

Never removed: the head, any kept version, uploads (the stored inputs of learned concepts) and the mask cache.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cns_ray.errors import InputError, StoreError
from cns_ray.store.commit import head_for_write, move_head, remove_version_files
from cns_ray.store.head import RECENT_MOVES, HeadRecord, ranges_has, ranges_iter, ranges_remove
from cns_ray.store.maintenance import version_orphans
from cns_ray.store.manifest import now_iso

if TYPE_CHECKING:
    from cns_ray.store.store import ConceptStore

log = logging.getLogger(__name__)

TMP_RE = re.compile(r"(^|/)\.[^/]+\.tmp-[0-9a-f]{32}$")
RETRIES = 5


@dataclass(frozen=True)
class GcPolicy:
    """What ``gc`` may remove."""

    keep_last: int | None = None
    """Keep the N newest versions of each tenant (plus its head and the head's parent); None: keep every version."""
    grace_s: float = 6 * 3600.0
    """Temporary files, failed runs' checkpoints and unmarked leftovers must be untouched this long."""
    dry_run: bool = False
    """Report what would be removed, remove nothing."""

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise InputError(f"keep_last={self.keep_last} must be >= 1 (the head is always kept): give 1 or more, or none")
        if self.grace_s < 0:
            raise InputError(f"grace_s={self.grace_s} must be >= 0")


@dataclass
class GcReport:
    removed_versions: dict[str, list[int]] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    legacy_manifests: list[str] = field(default_factory=list)
    dry_run: bool = False


def collect(store: "ConceptStore", policy: GcPolicy, now: float | None = None) -> GcReport:
    now = time.time() if now is None else now
    rep = GcReport(dry_run=policy.dry_run)
    b = store.backend
    for t in store.list_tenants():
        if policy.keep_last is not None:
            dropped = _retain(store, t, policy.keep_last, policy.dry_run)
            if dropped:
                rep.removed_versions[t] = dropped
        if b.exists(store._tkey(t, "head.json")) and b.exists(store._tkey(t, "manifest.json")):
            rep.legacy_manifests.append(b.uri(store._tkey(t, "manifest.json")))
            if not policy.dry_run:
                b.delete(store._tkey(t, "manifest.json"))
    for o in version_orphans(store, now, policy.grace_s):
        rep.orphans.append(b.uri(o.prefix))
        if not policy.dry_run:
            remove_version_files(store, o.tenant, o.version) if o.version is not None else _delete_prefix(store, o.prefix)
    for e in b.list_entries("tenants") + b.list_entries("bases"):
        if TMP_RE.search(e.key) and e.mtime < now - policy.grace_s:
            rep.temp_files.append(b.uri(e.key))
            if not policy.dry_run:
                b.delete(e.key)
    for t in b.list_dirs("checkpoints"):
        for run in b.list_dirs(f"checkpoints/{t}"):
            entries = b.list_entries(f"checkpoints/{t}/{run}")
            if entries and max(e.mtime for e in entries) < now - policy.grace_s:
                rep.checkpoints.append(b.uri(f"checkpoints/{t}/{run}"))
                if not policy.dry_run:
                    _delete_prefix(store, f"checkpoints/{t}/{run}")
    return rep


def _delete_prefix(store: "ConceptStore", prefix: str) -> None:
    store.backend.delete_prefix(prefix)


def retention_keep(store: "ConceptStore", tenant: str, head: HeadRecord, keep_last: int) -> set[int]:
    """The versions ``keep_last`` keeps: the N newest kept ones, the head, and the head's parent."""
    live = list(ranges_iter(head.live))
    keep = set(live[-keep_last:]) | {head.head}
    parent = store.version_entry(tenant, head.head, head).parent
    if parent is not None and ranges_has(head.live, parent):
        keep.add(parent)
    return keep


def _retain(store: "ConceptStore", tenant: str, keep_last: int, dry_run: bool) -> list[int]:
    for _ in range(RETRIES):
        head, tag = head_for_write(store, tenant)
        if head is None or head.head is None:
            return []
        keep = retention_keep(store, tenant, head, keep_last)
        drop = [v for v in ranges_iter(head.live) if v not in keep]
        if not drop or dry_run:
            return drop
        if drop_versions(store, tenant, head, tag, drop, "gc"):
            return drop
    raise StoreError(f"tenant {tenant!r}: the head kept moving during gc ({RETRIES} tries); retry later")


def drop_versions(store: "ConceptStore", tenant: str, head: HeadRecord, tag: str | None, drop: list[int], action: str) -> bool:
    """Take ``drop`` out of the kept set (never the head), then delete their files. False (nothing removed) if the
    head moved since ``head`` was read."""
    if head.head in drop:
        raise InputError(f"tenant {tenant!r}: version {head.head} is the head and cannot be removed; move the head first")
    mid = uuid.uuid4().hex
    moves = (head.moves + [{"at": now_iso(), "head": head.head, "action": action, "move_id": mid, "removed": len(drop)}])[-RECENT_MOVES:]
    new = HeadRecord(tenant, head.head, head.committed, ranges_remove(head.live, drop), mid, moves)
    if not move_head(store, tenant, new, tag, lambda cur: cur.has_move(mid)):
        return False
    for v in drop:
        remove_version_files(store, tenant, v)
    log.info("tenant %s: removed %d old version(s) (%s)", tenant, len(drop), action)
    return True
