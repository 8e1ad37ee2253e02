"""Store-wide chores: export one version, read an export back, verify everything, find invisible leftovers."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from cns_ray.errors import CNSError, CorruptStateError, NotFoundError
from cns_ray.store import codec
from cns_ray.store.backend import open_backend
from cns_ray.store.manifest import VERSION_FILES, VersionEntry, file_digest, now_iso
from cns_ray.store.names import validate_name
from cns_ray.store.state import TenantState

if TYPE_CHECKING:
    from cns_ray.store.store import ConceptStore

EXPORT_KIND = "cns-export"


def export_version(store: "ConceptStore", tenant: str, dest_dir: str, version: int | None = None) -> str:
    """Copy one version's files (checked first) plus a manifest excerpt to ``dest_dir`` (folder or s3://). Returns its URI."""
    state = store.load(tenant, version)
    m = store._require(tenant)
    entry = m.entry(state.version)
    files = store._read_version(tenant, entry)
    dest = open_backend(dest_dir)
    for f, data in files.items():
        dest.put(f, data)
    excerpt = {
        "kind": EXPORT_KIND, "schema_version": 1, "tenant": tenant, "exported_from": store.uri(),
        "exported_at": now_iso(), "was_head": entry.version == m.head, "version": asdict(entry),
    }
    dest.put("manifest.json", json.dumps(excerpt, indent=1, sort_keys=True).encode())
    return dest.uri()


def load_export(src_dir: str) -> TenantState:
    """Read a folder written by :func:`export_version` back into a TenantState (checksums and contents checked)."""
    src = open_backend(src_dir)
    try:
        ex = json.loads(src.get("manifest.json"))
        if ex.get("kind") != EXPORT_KIND:
            raise ValueError(f"kind is {ex.get('kind')!r}")
        entry = VersionEntry(**ex["version"])
    except NotFoundError:
        raise NotFoundError(f"{src.uri()} has no manifest.json: it is not a cns export") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptStateError(f"{src.uri('manifest.json')} is not a cns export manifest ({e})") from e
    data = {}
    for f in VERSION_FILES:
        data[f] = src.get(f)
        if file_digest(data[f]) != entry.files.get(f):
            raise CorruptStateError(f"{src.uri(f)} does not match the export's manifest (size/sha256): it is truncated or altered")
    return TenantState(
        tenant=ex["tenant"], base_id=entry.base_id,
        delta=codec.decode_delta(data["delta.parquet"], src.uri("delta.parquet")),
        tokens=codec.decode_tokens(data["tokens.parquet"], src.uri("tokens.parquet")),
        concepts=codec.decode_concepts(data["concepts.parquet"], src.uri("concepts.parquet")),
        version=entry.version,
    )


def _tenant_manifests(store: "ConceptStore"):
    """(tenant folder, its manifest or None, the error reading it or None) for every folder under tenants/."""
    for t in store._backend.list_dirs("tenants"):
        try:
            validate_name(t, "tenant")
            m, _ = store._manifest(t)
        except CNSError as e:
            yield t, None, e
            continue
        yield t, m, None


def verify_store(store: "ConceptStore") -> list[str]:
    problems = []
    b = store._backend
    for t, m, err in _tenant_manifests(store):
        if err is not None:
            problems.append(f"tenant folder {t!r}: {err}")
            continue
        if m is None:
            continue
        have = {e.version for e in m.versions}
        for e in sorted(m.versions, key=lambda e: e.version):
            if e.parent is not None and e.parent not in have:
                problems.append(f"tenant {t!r} version {e.version}: parent {e.parent} is not in the manifest")
            try:
                store.load(t, e.version)
            except CNSError as ex:
                problems.append(f"tenant {t!r} version {e.version}: {ex}")
    for base in b.list_dirs("bases"):
        for key in b.list_files(f"bases/{base}/general"):
            try:
                codec.decode_masks(b.get(key), b.uri(key))
            except CNSError as ex:
                problems.append(f"general masks {b.uri(key)}: {ex}")
    return problems


def find_orphans(store: "ConceptStore") -> list[str]:
    out = []
    b = store._backend
    for t, m, err in _tenant_manifests(store):
        if err is not None:
            continue
        committed = set() if m is None else {e.version for e in m.versions}
        for d in b.list_dirs(f"tenants/{t}/versions"):
            if d.isdigit() and int(d) in committed:
                continue
            # A losing commit deletes its files; on a local store the emptied folder stays (and a later commit may
            # reuse its number): nothing is left behind there.
            if b.list_files(f"tenants/{t}/versions/{d}"):
                out.append(f"{b.uri(f'tenants/{t}/versions/{d}')}: files without a manifest entry "
                           "(an interrupted or losing commit; invisible, safe to delete when no commit is running)")
    return out
