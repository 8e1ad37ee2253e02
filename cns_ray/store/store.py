"""ConceptStore: per-tenant immutable versions of (delta, tokens, concepts), a small head pointer as commit point.

Layout under the store root (a folder or ``s3://bucket/prefix``)::

    bases/{base_id}/general/{key}.parquet        cached general-neuron masks (+ {key}.json: size and sha256)
    tenants/{tenant}/head.json                   head, committed and kept versions, last moves: the commit point
    tenants/{tenant}/versions/{v}/commit.json    the commit's claim on number v: commit id + lease
    tenants/{tenant}/versions/{v}/version.json   the version record: parent, base, concepts, files' sizes + sha256
    tenants/{tenant}/versions/{v}/{delta,tokens,concepts}.parquet
    tenants/{tenant}/versions/{v}/cones.parquet  only with Cones concepts: their index sets (Rice-coded gaps)
    tenants/{tenant}/manifest.json               legacy (before head.json): read, migrated on the next write
    uploads/{tenant}/{id}/                       images sent to the HTTP learn route
    checkpoints/{tenant}/{run}/                  Ray Train checkpoints of running learning jobs
    inputs/...                                   folders named as ``store:inputs/...`` learning inputs

The commit protocol (idempotent under lost responses) is in :mod:`cns_ray.store.commit`. A head check is one small
read (a conditional GET on S3 when the head was seen before), whatever the number of versions.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from cns_ray.config import StoreConfig
from cns_ray.errors import CorruptStateError, InvalidNameError, NotFoundError
from cns_ray.store import codec, layout
from cns_ray.store.backend import NOT_MODIFIED, Backend, open_backend
from cns_ray.store.checks import drop_for_concept, semantic_problems
from cns_ray.store.commit import RECORD, commit_state, rollback_head
from cns_ray.store.head import HeadRecord, ranges_has, ranges_iter, ranges_text
from cns_ray.store.manifest import CONES_FILE, Manifest, VersionEntry, file_digest, version_files
from cns_ray.store.names import validate_name
from cns_ray.store.state import TenantState, VersionInfo

if TYPE_CHECKING:
    from cns_ray.store.gc import GcReport

log = logging.getLogger(__name__)

READ_THREADS = 8


class ConceptStore:
    """The concept store of one root URI. Thread-safe; many processes may share one root."""

    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self._backend: Backend = open_backend(cfg.uri)
        self._heads: dict[str, tuple[str, HeadRecord]] = {}  # tenant -> (tag, record): for conditional GETs
        self._heads_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ConceptStore({self.uri()!r})"

    @property
    def backend(self) -> Backend:
        """The storage backend (for store-owned chores: maintenance, gc)."""
        return self._backend

    # ------------------------------------------------------------------ keys
    def uri(self, *parts: str) -> str:
        """Absolute URI under the store root (e.g. for checkpoints). Refuses '..' and empty segments."""
        segs = [s for p in parts for s in str(p).split("/")]
        bad = [s for s in segs if s in ("", ".", "..")]
        if bad:
            raise InvalidNameError(f"store path {'/'.join(map(str, parts))!r} has empty, '.' or '..' segments: give plain names")
        return self._backend.uri("/".join(segs))

    @staticmethod
    def _tkey(tenant: str, *rest: str) -> str:
        return "/".join(["tenants", validate_name(tenant, "tenant"), *rest])

    @staticmethod
    def _vkey(tenant: str, version: int, file: str) -> str:
        return ConceptStore._tkey(tenant, "versions", str(int(version)), file)

    def _read_head(self, tenant: str, cached: bool = True) -> tuple[HeadRecord | None, str | None, Manifest | None]:
        """(head record, its tag, the legacy manifest if the tenant has no head.json yet). One small read."""
        key = self._tkey(tenant, "head.json")
        with self._heads_lock:
            seen = self._heads.get(tenant) if cached else None
        got = self._backend.get_if_changed(key, seen[0] if seen else None)
        if got is NOT_MODIFIED:
            return seen[1], seen[0], None
        if got is None:
            return self._read_legacy(tenant)
        rec = HeadRecord.from_bytes(got[0], self._backend.uri(key))
        if rec.tenant != tenant:
            raise CorruptStateError(f"{self._backend.uri(key)} names tenant {rec.tenant!r}, not {tenant!r}; restore it from a backup")
        with self._heads_lock:
            self._heads[tenant] = (got[1], rec)
        return rec, got[1], None

    def _read_legacy(self, tenant: str) -> tuple[HeadRecord | None, None, Manifest | None]:
        key = self._tkey(tenant, "manifest.json")
        got = self._backend.get_tagged(key)
        if got is None:
            return None, None, None
        m = Manifest.from_bytes(got[0], self._backend.uri(key))
        if m.tenant != tenant:
            raise CorruptStateError(f"{self._backend.uri(key)} names tenant {m.tenant!r}, not {tenant!r}; restore it from a backup")
        return HeadRecord.from_manifest(m), None, m

    # ------------------------------------------------------------------ reading
    def head_record(self, tenant: str) -> HeadRecord | None:
        """The tenant's head record (head, committed and kept versions), None if it has none."""
        return self._read_head(tenant)[0]

    def list_tenants(self) -> list[str]:
        out = []
        for t in self._backend.list_dirs("tenants"):
            try:
                validate_name(t, "tenant")
            except InvalidNameError:
                log.warning("ignoring folder %r under tenants/: not a valid tenant name", t)
                continue
            if self._backend.exists(self._tkey(t, "head.json")) or self._backend.exists(self._tkey(t, "manifest.json")):
                out.append(t)
        return out

    def head(self, tenant: str) -> int | None:
        rec = self.head_record(tenant)
        return None if rec is None else rec.head

    def version_entry(self, tenant: str, version: int, head: HeadRecord | None = None) -> VersionEntry:
        """One kept version's record; NotFoundError if the tenant has no such version."""
        rec, _, legacy = (head, None, None) if head is not None else self._read_head(tenant)
        if rec is None or not ranges_has(rec.live, int(version)):
            have = "none" if rec is None else ranges_text(rec.live)
            raise NotFoundError(f"tenant {tenant!r} has no version {version} (versions: {have}); pick one from `cns concepts history`")
        if legacy is not None:
            return legacy.entry(int(version))
        key = self._vkey(tenant, version, RECORD)
        try:
            data = self._backend.get(key)
        except NotFoundError:
            if head is not None and not self._backend.exists(self._tkey(tenant, "head.json")):
                _, _, legacy = self._read_legacy(tenant)  # a legacy tenant, read through a passed-in head
                if legacy is not None:
                    return legacy.entry(int(version))
            raise CorruptStateError(f"{self._backend.uri(key)} is missing but version {version} of tenant {tenant!r} is "
                                    "committed; restore it from a backup or roll back to another version") from None
        e = VersionEntry.from_bytes(data, self._backend.uri(key), tenant)
        if e.version != int(version):
            raise CorruptStateError(f"{self._backend.uri(key)} describes version {e.version}, not {version}; restore it from a backup")
        return e

    def history(self, tenant: str) -> list[VersionInfo]:
        rec, _, legacy = self._read_head(tenant)
        if rec is None:
            return []
        if legacy is not None:
            entries = sorted(legacy.versions, key=lambda e: e.version)
        else:
            with ThreadPoolExecutor(READ_THREADS) as pool:
                entries = list(pool.map(lambda v: self.version_entry(tenant, v, rec), ranges_iter(rec.live)))
        return [VersionInfo(e.version, e.parent, e.created_at, e.message, e.base_id, list(e.concepts), e.nnz, e.version == rec.head)
                for e in entries]

    def load(self, tenant: str, version: int | None = None, *, shapes=None, base_id: str | None = None,
             token_dim: int | None = None) -> TenantState:
        """A version's state (head by default), integrity-checked, checked like a commit, and validated against the
        served base (``shapes``, ``base_id``, ``token_dim``: the text encoder's width) when given."""
        rec, _, _ = self._read_head(tenant)
        if rec is None or rec.head is None:
            raise NotFoundError(f"tenant {tenant!r} has no versions in store {self.uri()}: learn a concept first (cns learn)")
        entry = self.version_entry(tenant, rec.head if version is None else int(version), rec)
        return self.load_entry(tenant, entry, shapes=shapes, base_id=base_id, token_dim=token_dim)

    def load_entry(self, tenant: str, entry: VersionEntry, *, shapes=None, base_id: str | None = None,
                   token_dim: int | None = None) -> TenantState:
        """The state of one version record (see :meth:`load`)."""
        files = self.read_version_files(tenant, entry)
        v = entry.version
        src = {f: self._backend.uri(self._vkey(tenant, v, f)) for f in files}
        delta = codec.decode_delta(files["delta.parquet"], src["delta.parquet"])
        tokens = codec.decode_tokens(files["tokens.parquet"], src["tokens.parquet"])
        concepts = codec.decode_concepts(files["concepts.parquet"], src["concepts.parquet"])
        cones = codec.decode_cones(files[CONES_FILE], src[CONES_FILE]) if CONES_FILE in files else None
        concepts = codec.attach_cones(concepts, cones, src.get(CONES_FILE, src["concepts.parquet"]))
        where = f"tenant {tenant!r} version {v} ({self.uri('tenants', tenant, 'versions', str(v))})"
        mismatch = []
        if delta.base_id != entry.base_id:
            mismatch.append(f"delta base_id {delta.base_id!r} vs record {entry.base_id!r}")
        if delta.nnz != entry.nnz:
            mismatch.append(f"delta has {delta.nnz} entries, record says {entry.nnz}")
        if [c.name for c in concepts] != list(entry.concepts):
            mismatch.append(f"concepts {[c.name for c in concepts]} vs record {entry.concepts}")
        if sorted(tokens) != sorted(entry.tokens):
            mismatch.append(f"tokens {sorted(tokens)} vs record {sorted(entry.tokens)}")
        if mismatch:
            raise CorruptStateError(f"{where} is inconsistent with its record: " + "; ".join(mismatch))
        if shapes is not None or base_id is not None:
            delta.validate(shapes if shapes is not None else delta.shapes, base_id, source=where)
        state = TenantState(tenant=tenant, base_id=entry.base_id, delta=delta, tokens=tokens, concepts=concepts, version=v)
        p = semantic_problems(state, shapes, token_dim)
        if p:
            raise CorruptStateError(f"{where} fails {len(p)} check(s) a commit makes; roll back to another version "
                                    "(cns concepts rollback) or relearn:\n  - " + "\n  - ".join(p))
        return state

    def read_version_files(self, tenant: str, entry: VersionEntry) -> dict[str, bytes]:
        """The version's files (three, four with Cones concepts), each checked against the record's size and sha256."""
        out = {}
        for f in version_files(entry):
            key = self._vkey(tenant, entry.version, f)
            try:
                data = self._backend.get(key)
            except NotFoundError as e:
                raise CorruptStateError(
                    f"{self._backend.uri(key)} is missing but version {entry.version} of tenant {tenant!r} is committed; "
                    "restore it from a backup or roll back to another version (cns concepts rollback)"
                ) from e
            want = entry.files.get(f, {})
            got = file_digest(data)
            if got != want:
                raise CorruptStateError(
                    f"{self._backend.uri(key)} is corrupt or truncated: {got['bytes']} bytes (sha256 {got['sha256'][:12]}), "
                    f"the record says {want.get('bytes')} bytes (sha256 {str(want.get('sha256'))[:12]}); "
                    "restore it from a backup or roll back to another version (cns concepts rollback)"
                )
            out[f] = data
        return out

    # ------------------------------------------------------------------ writing
    def commit(self, tenant: str, state: TenantState, *, parent: int | None, message: str = "") -> int:
        """Write ``state`` as a new version whose parent is ``parent`` and move the head to it.

        Raises :class:`CommitConflictError` if the head is no longer ``parent``; nothing of this commit is visible then.
        """
        return commit_state(self, tenant, state, parent, message, "commit")

    def rollback(self, tenant: str, version: int) -> None:
        """Move the head to a kept version (after checking that version's files); history keeps every version."""
        rollback_head(self, tenant, int(version))

    def delete_concept(self, tenant: str, name: str) -> int:
        """A new version without concept ``name``: its token removed, its delta entries no other concept covers reset.
        Its learned values on neurons it shared stay, and old versions still hold it: :meth:`purge` erases it."""
        validate_name(name, "concept")
        state = self.load(tenant)
        rec = state.concept(name)
        if rec is None:
            raise NotFoundError(
                f"tenant {tenant!r} has no concept {name!r} at head version {state.version} "
                f"(concepts: {[c.name for c in state.concepts]})"
            )
        rest = [c for c in state.concepts if c.name != name]
        drop = drop_for_concept(rec, rest)
        delta = state.delta.without(drop)
        tokens = dict(state.tokens)
        if all(c.token != rec.token for c in rest):
            tokens.pop(rec.token, None)
        dropped = state.delta.nnz - delta.nnz
        message = (f"delete concept {name}: removed token {rec.token}, reset {dropped} delta entries "
                   f"({rec.nnz - dropped} of its neurons kept: shared with other concepts)")
        new = TenantState(tenant=tenant, base_id=state.base_id, delta=delta, tokens=tokens, concepts=rest)
        return commit_state(self, tenant, new, state.version, message, "delete")

    # ------------------------------------------------------------------ inputs and checkpoints (layout.py)
    def save_uploads(self, tenant: str, images: list[bytes], suffix: str = ".png") -> str:
        """Write a learning request's images create-once under ``uploads/{tenant}/{id}/``; returns ``store:REL``
        (what a learning request names, valid wherever the store is reached from)."""
        key = layout.new_upload_key(tenant)
        for i, data in enumerate(images):
            self._backend.put_once(f"{key}/{i:03d}{suffix}", data)
        return layout.store_ref(key)

    def checkpoint_location(self, tenant: str):
        """(storage_path, storage_filesystem or None) of the tenant's Ray Train checkpoints: ``checkpoints/{tenant}``."""
        return layout.checkpoint_location(self.cfg.uri, tenant)

    # ------------------------------------------------------------------ general masks
    def _mkey(self, base_id: str, key: str) -> str:
        return f"bases/{validate_name(base_id, 'base_id')}/general/{validate_name(key, 'general-mask key')}.parquet"

    def read_general_masks(self, mask_key: str):
        """(masks, meta) of one cache file, checked against its digest sidecar ``{key}.json`` when there is one
        (files written before the sidecar existed are checked by decoding only). CorruptStateError if damaged."""
        data = self._backend.get(mask_key)
        side = mask_key[: -len(".parquet")] + ".json"
        try:
            want = json.loads(self._backend.get(side))
        except NotFoundError:
            want = None
        except ValueError as e:
            raise CorruptStateError(f"{self._backend.uri(side)} is not JSON ({e}); delete it and the mask file to recompute") from e
        got = file_digest(data)
        if want is not None and {"bytes": want.get("bytes"), "sha256": want.get("sha256")} != got:
            raise CorruptStateError(f"{self._backend.uri(mask_key)} is corrupt or truncated: {got['bytes']} bytes "
                                    f"(sha256 {got['sha256'][:12]}), its digest file says {want.get('bytes')} bytes "
                                    f"(sha256 {str(want.get('sha256'))[:12]}); delete both to recompute (cns calibrate)")
        return codec.decode_masks(data, self._backend.uri(mask_key))

    def get_general_masks(self, base_id: str, key: str):
        """Cached general masks (layer -> bool [out, in]) or None; a damaged cache file counts as a miss."""
        try:
            masks, _ = self.read_general_masks(self._mkey(base_id, key))
        except NotFoundError:
            return None
        except CorruptStateError as e:
            log.warning("ignoring damaged general-mask cache (it will be recomputed): %s", e)
            return None
        return masks

    def put_general_masks(self, base_id: str, key: str, masks, meta: dict) -> None:
        k = self._mkey(base_id, key)
        data = codec.encode_masks(masks, {**meta, "base_id": base_id, "key": key})
        self._backend.put(k, data)
        self._backend.put(k[: -len(".parquet")] + ".json", json.dumps(file_digest(data), sort_keys=True).encode())

    # ------------------------------------------------------------------ maintenance (export, verify)
    def export(self, tenant: str, dest_dir: str, version: int | None = None) -> str:
        from cns_ray.store.maintenance import export_version

        return export_version(self, tenant, dest_dir, version)

    def verify(self, *, shapes=None, base_id: str | None = None, token_dim: int | None = None) -> list[str]:
        """Every problem across every version of every tenant, the layout and the mask cache; [] if all is well.
        With a base's ``shapes``/``base_id``/``token_dim``, also what loading on that base would refuse."""
        from cns_ray.store.maintenance import verify_store

        return verify_store(self, shapes, base_id, token_dim)

    def gc(self, policy) -> "GcReport":
        """Remove orphans, stale temporary files and checkpoints, and old versions by ``policy`` (see gc.py)."""
        from cns_ray.store.gc import collect

        return collect(self, policy)

    def orphans(self, now: float | None = None) -> list[str]:
        """Version folders no head record keeps (interrupted or losing commits, past their lease at ``now``, default
        the current time): invisible garbage, not errors."""
        from cns_ray.store.maintenance import find_orphans

        return find_orphans(self, now)
