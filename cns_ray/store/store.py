"""ConceptStore: per-tenant immutable versions of (delta, tokens, concepts), a manifest head as commit point.

Layout under the store root (a folder or ``s3://bucket/prefix``)::

    bases/{base_id}/general/{key}.parquet        cached general-neuron masks
    tenants/{tenant}/manifest.json               versions + head: the commit point
    tenants/{tenant}/versions/{v}/{delta,tokens,concepts}.parquet

A commit claims a version number by creating its ``delta.parquet`` create-once, writes the other files, then
replaces the manifest conditionally (on the content it read). Until that replace succeeds the version is
invisible; if it fails (another writer moved the head) the caller gets :class:`CommitConflictError` and the
half version stays invisible (and is cleaned up on a definite conflict). Version numbers can skip a number left
by a crashed commit.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from cns_ray.config import StoreConfig
from cns_ray.errors import CNSError, CommitConflictError, CorruptStateError, InvalidNameError, NotFoundError, StoreError
from cns_ray.store import codec
from cns_ray.store.backend import Backend, KeyExists, PreconditionFailed, open_backend
from cns_ray.store.checks import check_state, drop_for_concept
from cns_ray.store.manifest import VERSION_FILES, Manifest, VersionEntry, file_digest, now_iso
from cns_ray.store.names import validate_name
from cns_ray.store.state import TenantState, VersionInfo

log = logging.getLogger(__name__)

_CLAIM_TRIES = 20


class ConceptStore:
    """The concept store of one root URI. Thread-safe; many processes may share one root."""

    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self._backend: Backend = open_backend(cfg.uri)

    def __repr__(self) -> str:
        return f"ConceptStore({self.uri()!r})"

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

    def _manifest(self, tenant: str) -> tuple[Manifest | None, str | None]:
        key = self._tkey(tenant, "manifest.json")
        got = self._backend.get_tagged(key)
        if got is None:
            return None, None
        m = Manifest.from_bytes(got[0], self._backend.uri(key))
        if m.tenant != tenant:
            raise CorruptStateError(f"{self._backend.uri(key)} names tenant {m.tenant!r}, not {tenant!r}; restore it from a backup")
        return m, got[1]

    def _require(self, tenant: str) -> Manifest:
        m, _ = self._manifest(tenant)
        if m is None or m.head is None:
            raise NotFoundError(f"tenant {tenant!r} has no versions in store {self.uri()}: learn a concept first (cns learn)")
        return m

    # ------------------------------------------------------------------ reading
    def list_tenants(self) -> list[str]:
        out = []
        for t in self._backend.list_dirs("tenants"):
            try:
                validate_name(t, "tenant")
            except InvalidNameError:
                log.warning("ignoring folder %r under tenants/: not a valid tenant name", t)
                continue
            if self._backend.exists(self._tkey(t, "manifest.json")):
                out.append(t)
        return out

    def head(self, tenant: str) -> int | None:
        m, _ = self._manifest(tenant)
        return None if m is None else m.head

    def history(self, tenant: str) -> list[VersionInfo]:
        m, _ = self._manifest(tenant)
        if m is None:
            return []
        return [
            VersionInfo(e.version, e.parent, e.created_at, e.message, e.base_id, list(e.concepts), e.nnz, e.version == m.head)
            for e in sorted(m.versions, key=lambda e: e.version)
        ]

    def load(self, tenant: str, version: int | None = None, *, shapes=None, base_id: str | None = None) -> TenantState:
        """A version's state (head by default), integrity-checked, and validated against ``shapes``/``base_id``."""
        m = self._require(tenant)
        entry = m.entry(m.head if version is None else int(version))
        files = self._read_version(tenant, entry)
        v = entry.version
        delta = codec.decode_delta(files["delta.parquet"], self._backend.uri(self._vkey(tenant, v, "delta.parquet")))
        tokens = codec.decode_tokens(files["tokens.parquet"], self._backend.uri(self._vkey(tenant, v, "tokens.parquet")))
        concepts = codec.decode_concepts(files["concepts.parquet"], self._backend.uri(self._vkey(tenant, v, "concepts.parquet")))
        where = f"tenant {tenant!r} version {v} ({self.uri('tenants', tenant, 'versions', str(v))})"
        mismatch = []
        if delta.base_id != entry.base_id:
            mismatch.append(f"delta base_id {delta.base_id!r} vs manifest {entry.base_id!r}")
        if delta.nnz != entry.nnz:
            mismatch.append(f"delta has {delta.nnz} entries, manifest says {entry.nnz}")
        if [c.name for c in concepts] != list(entry.concepts):
            mismatch.append(f"concepts {[c.name for c in concepts]} vs manifest {entry.concepts}")
        if sorted(tokens) != sorted(entry.tokens):
            mismatch.append(f"tokens {sorted(tokens)} vs manifest {sorted(entry.tokens)}")
        if mismatch:
            raise CorruptStateError(f"{where} is inconsistent with its manifest: " + "; ".join(mismatch))
        if shapes is not None or base_id is not None:
            delta.validate(shapes if shapes is not None else delta.shapes, base_id, source=where)
        return TenantState(tenant=tenant, base_id=entry.base_id, delta=delta, tokens=tokens, concepts=concepts, version=v)

    def _read_version(self, tenant: str, entry: VersionEntry) -> dict[str, bytes]:
        out = {}
        for f in VERSION_FILES:
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
                    f"the manifest recorded {want.get('bytes')} bytes (sha256 {str(want.get('sha256'))[:12]}); "
                    "restore it from a backup or roll back to another version (cns concepts rollback)"
                )
            out[f] = data
        return out

    # ------------------------------------------------------------------ writing
    def commit(self, tenant: str, state: TenantState, *, parent: int | None, message: str = "") -> int:
        """Write ``state`` as a new version whose parent is ``parent`` and move the head to it.

        Raises :class:`CommitConflictError` if the head is no longer ``parent``; nothing of this commit is visible then.
        """
        return self._commit(tenant, state, parent, message, "commit")

    def _commit(self, tenant: str, state: TenantState, parent: int | None, message: str, action: str) -> int:
        validate_name(tenant, "tenant")
        check_state(tenant, state)
        m, tag = self._manifest(tenant)
        found = None if m is None else m.head
        if found != parent:
            raise self._conflict(tenant, parent, found, None)
        m = m or Manifest(tenant=tenant)
        delta_bytes = codec.encode_delta(state.delta, self.cfg.value_dtype)
        tokens_bytes = codec.encode_tokens(state.tokens)
        v = self._claim(tenant, m.next_version(), delta_bytes)
        written = ["delta.parquet"]
        try:
            concepts = [c if c.version_added is not None else replace(c, version_added=v) for c in state.concepts]
            files = {"delta.parquet": delta_bytes, "tokens.parquet": tokens_bytes, "concepts.parquet": codec.encode_concepts(concepts)}
            for f in ("tokens.parquet", "concepts.parquet"):
                try:
                    self._backend.put_once(self._vkey(tenant, v, f), files[f])
                except KeyExists as e:
                    raise StoreError(f"{self.uri('tenants', tenant, 'versions', str(v), f)} already exists although this commit claimed version {v}") from e
                written.append(f)
            m.versions.append(VersionEntry(
                version=v, parent=parent, created_at=now_iso(), message=message, base_id=state.base_id,
                concepts=[c.name for c in concepts], tokens=sorted(state.tokens), nnz=state.delta.nnz,
                value_dtype=self.cfg.value_dtype, files={f: file_digest(b) for f, b in files.items()},
            ))
            m.moved(v, action)
            self._backend.replace(self._tkey(tenant, "manifest.json"), m.to_bytes(), tag)
        except PreconditionFailed:
            now, _ = self._manifest(tenant)
            self._cleanup(tenant, v, written)
            raise self._conflict(tenant, parent, None if now is None else now.head, v) from None
        log.info("tenant %s: committed version %d (parent %s, %d entries): %s", tenant, v, parent, state.delta.nnz, message)
        return v

    def _claim(self, tenant: str, v: int, delta_bytes: bytes) -> int:
        """Create version ``v``'s delta.parquet create-once; a number taken by a leftover or a racer is skipped."""
        for _ in range(_CLAIM_TRIES):
            try:
                self._backend.put_once(self._vkey(tenant, v, "delta.parquet"), delta_bytes)
                return v
            except KeyExists:
                taken = [int(d) for d in self._backend.list_dirs(self._tkey(tenant, "versions")) if d.isdigit()]
                v = max([v, *taken]) + 1
        raise StoreError(f"tenant {tenant!r}: could not claim a version number after {_CLAIM_TRIES} tries (many concurrent committers?); retry")

    def _cleanup(self, tenant: str, v: int, written: list[str]) -> None:
        for f in reversed(written):  # delta.parquet (the claim) last
            try:
                self._backend.delete(self._vkey(tenant, v, f))
            except CNSError as e:
                log.warning("could not remove leftover %s of the losing commit: %s", f, e)

    def _conflict(self, tenant: str, expected: int | None, found: int | None, v: int | None) -> CommitConflictError:
        what = f"version {v} was not made visible" if v is not None else "nothing was written"
        return CommitConflictError(
            f"tenant {tenant!r}: commit expected head {expected}, found head {found}: another writer moved the head first "
            f"({what}). Fix: reload the tenant's state (store.load / store.head), apply your change to it again and "
            f"commit with parent={found}"
        )

    def rollback(self, tenant: str, version: int) -> None:
        """Move the head to an existing version (after checking that version's files); history keeps every version."""
        m, tag = self._manifest(tenant)
        if m is None:
            raise NotFoundError(f"tenant {tenant!r} has no versions in store {self.uri()}: nothing to roll back")
        m.entry(int(version))
        self.load(tenant, int(version))  # refuse to point the head at a damaged version
        if m.head == int(version):
            return
        before = m.head
        m.moved(int(version), "rollback")
        try:
            self._backend.replace(self._tkey(tenant, "manifest.json"), m.to_bytes(), tag)
        except PreconditionFailed:
            now, _ = self._manifest(tenant)
            raise self._conflict(tenant, before, None if now is None else now.head, None) from None
        log.info("tenant %s: head %s -> %s (rollback)", tenant, before, version)

    def delete_concept(self, tenant: str, name: str) -> int:
        """A new version without concept ``name``: its token removed, its delta entries no other concept covers reset."""
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
        return self._commit(tenant, new, state.version, message, "delete")

    # ------------------------------------------------------------------ general masks
    def _mkey(self, base_id: str, key: str) -> str:
        return f"bases/{validate_name(base_id, 'base_id')}/general/{validate_name(key, 'general-mask key')}.parquet"

    def get_general_masks(self, base_id: str, key: str):
        """Cached general masks (layer -> bool [out, in]) or None; a damaged cache file counts as a miss."""
        k = self._mkey(base_id, key)
        try:
            masks, _ = codec.decode_masks(self._backend.get(k), self._backend.uri(k))
        except NotFoundError:
            return None
        except CorruptStateError as e:
            log.warning("ignoring damaged general-mask cache (it will be recomputed): %s", e)
            return None
        return masks

    def put_general_masks(self, base_id: str, key: str, masks, meta: dict) -> None:
        k = self._mkey(base_id, key)
        self._backend.put(k, codec.encode_masks(masks, {**meta, "base_id": base_id, "key": key}))

    # ------------------------------------------------------------------ maintenance (export, verify)
    def export(self, tenant: str, dest_dir: str, version: int | None = None) -> str:
        from cns_ray.store.maintenance import export_version

        return export_version(self, tenant, dest_dir, version)

    def verify(self) -> list[str]:
        """Every problem across every version of every tenant and the mask cache; [] if all is well."""
        from cns_ray.store.maintenance import verify_store

        return verify_store(self)

    def orphans(self) -> list[str]:
        """Version folders no manifest names (interrupted or losing commits): invisible garbage, not errors."""
        from cns_ray.store.maintenance import find_orphans

        return find_orphans(self)
