"""The concept library: learned world instances, kept through the concept store in a reserved namespace.

Under a store root, ``library/{base_id}/`` is a concept store of its own (one pseudo-tenant per library concept:
``library/{base_id}/tenants/lib0007/...``, committed like any tenant's version) plus ``library/{base_id}/manifest.json``,
the library's own manifest: one entry per finished concept with its instance, learning settings, version, and the
image embedding of its references (the metric model's image encoder). Nothing here is under ``tenants/``, so no
user tenant sees, lists or serves it; a library is per base model (its ``base_id`` in the path and in every entry),
so a library built on another base is never read for this one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from cns_ray.config import StoreConfig
from cns_ray.errors import BaseMismatchError, CommitConflictError, CorruptStateError, InputError
from cns_ray.store import ConceptStore
from cns_ray.store.backend import PreconditionFailed
from cns_ray.store.names import validate_name

log = logging.getLogger(__name__)

LIBRARY_TOP = "library"
MANIFEST = "manifest.json"
FORMAT = 1


@dataclass
class LibraryEntry:
    """One finished library concept."""

    name: str
    shape: str
    """Its class word."""
    look: dict
    """The instance's look (cns_ray.world.scene.Look fields)."""
    token: str
    version: int
    base_id: str
    embedding: list[float]
    """Unit image embedding of its references (mean of the per-image unit embeddings, renormalised)."""
    steps: int
    seed: int
    n_images: int
    seconds: float
    nnz: int
    metric: str = "toy"
    extra: dict = field(default_factory=dict)


def library_uri(store_uri: str, base_id: str) -> str:
    """The library's root under a store root: ``{store}/library/{base_id}``."""
    return f"{store_uri.rstrip('/')}/{LIBRARY_TOP}/{validate_name(base_id, 'base_id')}"


def reference_embedding(metric, images: torch.Tensor) -> torch.Tensor:
    """images float [N, 3, H, W] in [-1, 1] (or uint8 [N, H, W, 3]) -> unit embedding [c] of the set."""
    e = F.normalize(metric.embed_images(images).float(), dim=-1)  # [N, c]
    return F.normalize(e.mean(0), dim=-1)


class ConceptLibrary:
    """The library of one base model under one store root."""

    def __init__(self, store_uri: str, base_id: str):
        self.base_id = base_id
        self.uri = library_uri(store_uri, base_id)
        self.store = ConceptStore(StoreConfig(uri=self.uri))

    def _read(self) -> tuple[dict, str | None]:
        got = self.store.backend.get_tagged(MANIFEST)
        if got is None:
            return {"format": FORMAT, "base_id": self.base_id, "entries": {}}, None
        try:
            m = json.loads(got[0])
        except ValueError as e:
            raise CorruptStateError(f"{self.store.backend.uri(MANIFEST)} is not JSON ({e}): delete it and rerun "
                                    "python -m pipelines.build_library (finished concepts are recovered from the store)") from e
        if m.get("base_id") != self.base_id:
            raise BaseMismatchError([f"library manifest names base_id {m.get('base_id')!r}, its folder is for {self.base_id!r}"],
                                    source=self.store.backend.uri(MANIFEST))
        return m, got[1]

    def entries(self) -> dict[str, LibraryEntry]:
        """Finished entries by name; entries of another base are refused (never mixed in)."""
        m, _ = self._read()
        out = {}
        for name, raw in m.get("entries", {}).items():
            e = LibraryEntry(**raw)
            if e.base_id != self.base_id:
                raise BaseMismatchError([f"library entry {name!r} was learned on base_id {e.base_id!r}, this library is "
                                         f"for {self.base_id!r}"], source=self.store.backend.uri(MANIFEST))
            out[name] = e
        return out

    def add(self, entry: LibraryEntry, retries: int = 5) -> None:
        """Record a finished entry (compare-and-swap on the manifest; one writer in practice: the build driver)."""
        if entry.base_id != self.base_id:
            raise BaseMismatchError([f"entry {entry.name!r} has base_id {entry.base_id!r}, the library's is {self.base_id!r}"],
                                    source=self.uri)
        for _ in range(retries):
            m, tag = self._read()
            m["entries"][entry.name] = asdict(entry)
            try:
                self.store.backend.replace(MANIFEST, json.dumps(m, sort_keys=True).encode(), tag)
                return
            except PreconditionFailed:
                continue
        raise CommitConflictError(f"{self.store.backend.uri(MANIFEST)} kept changing while adding {entry.name!r}: "
                                  "run one library build at a time")

    def matrix(self, base, names: list[str] | None = None):
        """(names, states) of the finished entries (all, or ``names``), each loaded and checked against ``base``."""
        entries = self.entries()
        names = sorted(entries) if names is None else names
        missing = [n for n in names if n not in entries]
        if missing:
            raise InputError(f"library entries {missing[:5]} are not finished in {self.uri}: build them first")
        shapes = base.target_shapes()
        states = [self.store.load(n, entries[n].version, shapes=shapes, base_id=self.base_id) for n in names]
        return [entries[n] for n in names], states


def state_offsets(base, states, entries) -> list[tuple]:
    """(delta, token offset from the class word's embedding) of each library state."""
    from cns_ray.synth.coords import class_word_embedding

    out = []
    for st, e in zip(states, entries):
        rec = st.concept(e.name)
        out.append((st.delta, st.tokens[rec.token].float() - class_word_embedding(base, rec.class_word)))
    return out


def library_arrays(base, lib: ConceptLibrary, names: list[str] | None = None, coords=None):
    """(entries, x [N, D] state vectors, cond [N, c] reference embeddings, coords) of the finished entries; ``coords``
    defaults to the union of their supports."""
    from cns_ray.synth.coords import CoordSet

    entries, states = lib.matrix(base, names)
    pairs = state_offsets(base, states, entries)
    if coords is None:
        coords = CoordSet.union([d for d, _ in pairs], int(pairs[0][1].numel()))
    rows = []
    for (d, off), e in zip(pairs, entries):
        v, outside = coords.vector(d, off)
        if outside:
            log.warning("library entry %s: %d delta entries lie outside the coordinate set (dropped)", e.name, outside)
        rows.append(v)
    cond = torch.tensor([e.embedding for e in entries], dtype=torch.float32)
    return entries, torch.stack(rows), cond, coords


SOURCES = ("flow", "blend", "nearest")


def library_proposer(base, store_uri: str, coords, source: str, metric: str):
    """embedding [c] -> state vector [D] on ``coords`` from the library of ``base`` under ``store_uri``: its
    ``blend`` of 5 nearest or its ``nearest`` entry (cns_ray.synth.baselines), with the name of the entry(ies) used.

    Refuses an empty library, or one embedded with another metric model, with the fix; reads nothing of a tenant."""
    from cns_ray.synth.baselines import blend, nearest

    if source not in SOURCES[1:]:
        raise InputError(f"source={source!r}: a library proposal is one of {list(SOURCES[1:])} ('flow' samples the synthesizer)")
    lib = ConceptLibrary(store_uri, base.base_id)
    entries = lib.entries()
    if not entries:
        raise InputError(f"source={source!r} needs the library of base_id {base.base_id} under {store_uri}, and "
                         f"{lib.uri} holds 0 finished entries: build it (python -m pipelines.build_library --store "
                         f"{store_uri}), point --library at the store that holds it, or use --source flow")
    metrics = sorted({e.metric for e in entries.values()})
    if metrics != [metric]:
        raise InputError(f"the library {lib.uri} was embedded with metric model(s) {metrics}, the references here with "
                         f"{metric!r}: pass --metric-model {metrics[0]} (or rebuild the library with {metric!r})")
    _, x, cond, _ = library_arrays(base, lib, coords=coords)  # [N, D], [N, c]
    if source == "blend":
        return lambda emb: blend(x, cond, emb)
    return lambda emb: nearest(x, cond, emb)[0]
