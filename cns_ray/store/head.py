"""A tenant's head pointer (``tenants/{t}/head.json``): small, whatever the number of versions. Replacing it is the
commit point.

It holds the head version, which versions were ever committed and which are still kept (as compact ranges), the id
of the move that wrote it and the last few moves (for idempotent retries after a lost response). Each version's
record (parent, files and their digests, concepts) lives apart, in ``versions/{v}/version.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from cns_ray.errors import CorruptStateError

HEAD_SCHEMA = 2
RECENT_MOVES = 32

Ranges = list[list[int]]
"""Sorted, disjoint, non-adjacent closed ranges ``[[a, b], ...]`` of version numbers."""


def ranges_add(r: Ranges, v: int) -> Ranges:
    return ranges_from(set(ranges_iter(r)) | {v})


def ranges_remove(r: Ranges, vs) -> Ranges:
    return ranges_from(set(ranges_iter(r)) - set(vs))


def ranges_iter(r: Ranges):
    for a, b in r:
        yield from range(a, b + 1)


def ranges_has(r: Ranges, v: int) -> bool:
    return any(a <= v <= b for a, b in r)


def ranges_from(vs) -> Ranges:
    out: Ranges = []
    for v in sorted(vs):
        if out and v == out[-1][1] + 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def ranges_text(r: Ranges) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in r) or "none"


@dataclass
class HeadRecord:
    tenant: str
    head: int | None = None
    committed: Ranges = field(default_factory=list)
    """Every version number that was ever the head (only grows: proves a commit landed)."""
    live: Ranges = field(default_factory=list)
    """Committed versions still kept (gc removes old ones from here before deleting their files)."""
    move_id: str = ""
    """Id of the commit/rollback that wrote this head."""
    moves: list[dict] = field(default_factory=list)
    """The last RECENT_MOVES moves: {"at", "head", "action", "move_id"}."""
    schema_version: int = HEAD_SCHEMA

    def top(self) -> int:
        return self.committed[-1][1] if self.committed else 0

    def moved(self, head: int, action: str, move_id: str, at: str) -> "HeadRecord":
        """A new record with the head at ``head`` (and ``head`` committed and live)."""
        moves = (self.moves + [{"at": at, "head": head, "action": action, "move_id": move_id}])[-RECENT_MOVES:]
        return HeadRecord(self.tenant, head, ranges_add(self.committed, head), ranges_add(self.live, head), move_id, moves)

    def has_move(self, move_id: str) -> bool:
        return self.move_id == move_id or any(m.get("move_id") == move_id for m in self.moves)

    @classmethod
    def from_manifest(cls, m) -> "HeadRecord":
        """The head record a legacy manifest.json (schema 1) stands for."""
        vs = ranges_from(e.version for e in m.versions)
        moves = [{**x, "move_id": x.get("move_id", "")} for x in m.moves[-RECENT_MOVES:]]
        return cls(tenant=m.tenant, head=m.head, committed=vs, live=[list(r) for r in vs], move_id="", moves=moves)

    def to_bytes(self) -> bytes:
        d = {"schema_version": self.schema_version, "tenant": self.tenant, "head": self.head, "committed": self.committed,
             "live": self.live, "move_id": self.move_id, "moves": self.moves}
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "HeadRecord":
        try:
            d = json.loads(data)
            if d.get("schema_version") != HEAD_SCHEMA:
                raise CorruptStateError(
                    f"{source} has schema version {d.get('schema_version')!r}, this cns-ray reads {HEAD_SCHEMA}: upgrade cns-ray")
            h = cls(tenant=d["tenant"], head=d["head"], committed=[[int(a), int(b)] for a, b in d["committed"]],
                    live=[[int(a), int(b)] for a, b in d["live"]], move_id=str(d.get("move_id", "")),
                    moves=list(d.get("moves", [])))
        except CorruptStateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # UnicodeDecodeError is a ValueError
            raise CorruptStateError(f"{source} is not a valid head record ({type(e).__name__}: {e}); restore it from a backup") from e
        if h.head is not None and not ranges_has(h.live, h.head):
            raise CorruptStateError(f"{source}: head {h.head} is not one of its kept versions ({ranges_text(h.live)}); restore it from a backup")
        return h
