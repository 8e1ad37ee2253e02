"""Store-wide chores: export one version, read an export back, verify everything, find invisible leftovers.

Uses only the store's public read API (head_record, version_entry, read_version_files, load_entry, backend)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from cns_ray.errors import CNSError, CorruptStateError, NotFoundError
from cns_ray.store import codec
from cns_ray.store.backend import open_backend
from cns_ray.store.commit import MARKER, read_marker
from cns_ray.store.head import HeadRecord, ranges_has, ranges_iter
from cns_ray.store.layout import layout_problems
from cns_ray.store.manifest import CONES_FILE, VersionEntry, file_digest, now_iso, version_files
from cns_ray.store.names import validate_name
from cns_ray.store.state import TenantState

if TYPE_CHECKING:
    from cns_ray.store.store import ConceptStore

EXPORT_KIND = "cns-export"


def export_version(store: "ConceptStore", tenant: str, dest_dir: str, version: int | None = None) -> str:
    """Copy one version's files (checked first) plus a record excerpt to ``dest_dir`` (folder or s3://). Returns its URI."""
    state = store.load(tenant, version)
    head = store.head_record(tenant)
    entry = store.version_entry(tenant, state.version, head)
    files = store.read_version_files(tenant, entry)
    dest = open_backend(dest_dir)
    for f, data in files.items():
        dest.put(f, data)
    excerpt = {
        "kind": EXPORT_KIND, "schema_version": 1, "tenant": tenant, "exported_from": store.uri(),
        "exported_at": now_iso(), "was_head": entry.version == head.head, "version": asdict(entry),
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
    for f in version_files(entry):
        data[f] = src.get(f)
        if file_digest(data[f]) != entry.files.get(f):
            raise CorruptStateError(f"{src.uri(f)} does not match the export's manifest (size/sha256): it is truncated or altered")
    return TenantState(
        tenant=ex["tenant"], base_id=entry.base_id,
        delta=codec.decode_delta(data["delta.parquet"], src.uri("delta.parquet")),
        tokens=codec.decode_tokens(data["tokens.parquet"], src.uri("tokens.parquet")),
        concepts=codec.attach_cones(
            codec.decode_concepts(data["concepts.parquet"], src.uri("concepts.parquet")),
            codec.decode_cones(data[CONES_FILE], src.uri(CONES_FILE)) if CONES_FILE in data else None,
            src.uri(CONES_FILE)),
        version=entry.version,
    )


VERIFY_THREADS = 4


def _tenant_heads(store: "ConceptStore"):
    """(tenant folder, its head record or None, the error reading it or None) for every folder under tenants/."""
    for t in store.backend.list_dirs("tenants"):
        try:
            validate_name(t, "tenant")
            h = store.head_record(t)
        except Exception as e:  # noqa: BLE001 - verify reports every problem and goes on
            yield t, None, e
            continue
        yield t, h, None


def _describe(e: Exception) -> str:
    return str(e) if isinstance(e, CNSError) else f"{type(e).__name__}: {e}"


def _check_version(store: "ConceptStore", t: str, h: HeadRecord, v: int, against: dict) -> list[str]:
    try:
        e = store.version_entry(t, v, h)
        if e.parent is not None and not ranges_has(h.committed, e.parent):
            return [f"tenant {t!r} version {v}: parent {e.parent} was never committed"]
        store.load_entry(t, e, **against)
    except Exception as ex:  # noqa: BLE001 - a damaged file may raise anything; report it, check the rest
        return [f"tenant {t!r} version {v}: {_describe(ex)}"]
    return []


def verify_store(store: "ConceptStore", shapes=None, base_id: str | None = None, token_dim: int | None = None) -> list[str]:
    """Every problem of every kept version of every tenant, of the layout and of the mask cache; with ``shapes``,
    ``base_id``, ``token_dim`` (a served base's), the checks load makes against it too. Never raises for damaged data."""
    against = {"shapes": shapes, "base_id": base_id, "token_dim": token_dim}
    problems = []
    b = store.backend
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        for t, h, err in _tenant_heads(store):
            if err is not None:
                problems.append(f"tenant folder {t!r}: {_describe(err)}")
                continue
            if h is None:
                continue
            for p in pool.map(lambda v: _check_version(store, t, h, v, against), ranges_iter(h.live)):
                problems.extend(p)
    try:
        problems.extend(layout_problems(b))
        bases = b.list_dirs("bases")
    except Exception as e:  # noqa: BLE001
        return problems + [f"bases/: cannot list ({_describe(e)})"]
    for base in bases:
        for key in b.list_files(f"bases/{base}/general"):
            if not key.endswith(".parquet"):
                continue
            try:
                store.read_general_masks(key)
            except Exception as ex:  # noqa: BLE001
                problems.append(f"general masks {b.uri(key)}: {_describe(ex)}")
    return problems


def find_orphans(store: "ConceptStore", now: float | None = None) -> list[str]:
    """Version folders holding files that no head keeps; in-flight commits (a live lease) are not orphans."""
    return [f"{store.backend.uri(o.prefix)}: {o.why}" for o in version_orphans(store, time.time() if now is None else now)]


@dataclass(frozen=True)
class Orphan:
    tenant: str
    version: int | None
    prefix: str
    why: str


def version_orphans(store: "ConceptStore", now: float, grace_s: float = 0.0) -> list[Orphan]:
    """Version folders no head keeps, past their commit's lease (folders without a claim marker, from older
    versions of cns-ray: untouched for ``grace_s``)."""
    out = []
    b = store.backend
    for t, h, err in _tenant_heads(store):
        if err is not None:
            continue
        live = [] if h is None else h.live
        for d in b.list_dirs(f"tenants/{t}/versions"):
            if d.isdigit() and ranges_has(live, int(d)):
                continue
            prefix = f"tenants/{t}/versions/{d}"
            files = b.list_files(prefix)
            if not files:
                continue
            marker = f"{prefix}/{MARKER}"
            if marker in files:
                try:
                    if read_marker(b.get(marker)).get("lease_until", 0) > now:
                        continue  # an in-flight commit: not garbage yet
                except NotFoundError:
                    continue  # removed meanwhile
            elif grace_s > 0 and max((e.mtime for e in b.list_entries(prefix)), default=0.0) > now - grace_s:
                continue
            why = ("files of a version removed from the kept set" if h is not None and d.isdigit() and ranges_has(h.committed, int(d))
                   else "files without a committed record (an interrupted or losing commit); invisible, safe to delete")
            out.append(Orphan(t, int(d) if d.isdigit() else None, prefix, why))
    return out
