"""Per-version records (``versions/{v}/version.json``) and the legacy ``manifest.json`` (schema 1) they replace.

A version record names its parent, base, concepts, tokens and its files' sizes and sha256, so a reader detects a
truncated or altered file. Stores written before head.json existed keep one ``manifest.json`` per tenant with every
entry and the head; it is still read (and migrated to head.json + records on the tenant's next write).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from cns_ray.errors import CorruptStateError, NotFoundError

MANIFEST_SCHEMA = 1
RECORD_SCHEMA = 1
VERSION_FILES = ("delta.parquet", "tokens.parquet", "concepts.parquet")
"""Files every version has."""
CONES_FILE = "cones.parquet"
"""Only in versions holding Cones concepts (their index sets); versions before Cones never have it."""


def version_files(entry: "VersionEntry") -> tuple[str, ...]:
    """The files of this version: :data:`VERSION_FILES`, plus :data:`CONES_FILE` where its record lists it."""
    return VERSION_FILES + ((CONES_FILE,) if CONES_FILE in entry.files else ())


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def file_digest(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class VersionEntry:
    version: int
    parent: int | None
    created_at: str
    message: str
    base_id: str
    concepts: list[str]
    tokens: list[str]
    nnz: int
    value_dtype: str
    files: dict[str, dict]
    """file name -> {"bytes": int, "sha256": hex}"""
    commit_id: str | None = None
    """Id of the commit that wrote it (None for versions migrated from a legacy manifest)."""

    def to_bytes(self, tenant: str) -> bytes:
        return json.dumps({"schema_version": RECORD_SCHEMA, "tenant": tenant, **asdict(self)}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str, tenant: str) -> "VersionEntry":
        try:
            d = json.loads(data)
            if d.pop("schema_version", None) != RECORD_SCHEMA:
                raise ValueError("schema_version is not %d" % RECORD_SCHEMA)
            if d.pop("tenant", None) != tenant:
                raise ValueError(f"it does not belong to tenant {tenant!r}")
            e = cls(**d)
        except (ValueError, KeyError, TypeError, AttributeError) as ex:  # UnicodeDecodeError is a ValueError
            raise CorruptStateError(f"{source} is not a valid version record ({type(ex).__name__}: {ex}); "
                                    "restore it from a backup or roll back to another version") from ex
        return e


@dataclass
class Manifest:
    tenant: str
    head: int | None = None
    versions: list[VersionEntry] = field(default_factory=list)
    moves: list[dict] = field(default_factory=list)
    """Audit log of head moves: {"at", "head", "action"} (commit, rollback, delete)."""
    schema_version: int = MANIFEST_SCHEMA

    def entry(self, version: int) -> VersionEntry:
        for e in self.versions:
            if e.version == version:
                return e
        have = [e.version for e in self.versions]
        raise NotFoundError(f"tenant {self.tenant!r} has no version {version} (versions: {have}); pick one from `cns concepts history`")

    def next_version(self) -> int:
        return max((e.version for e in self.versions), default=0) + 1

    def moved(self, head: int, action: str) -> None:
        self.head = head
        self.moves.append({"at": now_iso(), "head": head, "action": action})

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "Manifest":
        try:
            d = json.loads(data)
            if d.get("schema_version") != MANIFEST_SCHEMA:
                raise CorruptStateError(
                    f"{source} has schema version {d.get('schema_version')!r}, this cns-ray reads {MANIFEST_SCHEMA}: upgrade cns-ray"
                )
            m = cls(tenant=d["tenant"], head=d["head"], versions=[VersionEntry(**e) for e in d["versions"]],
                    moves=list(d.get("moves", [])), schema_version=d["schema_version"])
        except CorruptStateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptStateError(f"{source} is not a valid manifest ({type(e).__name__}: {e}); restore it from a backup") from e
        if m.head is not None and m.head not in {e.version for e in m.versions}:
            raise CorruptStateError(f"{source}: head {m.head} is not one of its versions; restore it from a backup")
        return m
