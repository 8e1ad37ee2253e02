"""The store's data types: a tenant's state (delta + tokens + concept records) and one version's summary."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cns_ray.delta import SparseDelta

METHODS = ("cns", "cones", "synthesized")
DELTA_METHODS = ("cns", "synthesized")
"""Methods whose concepts hold delta values on their neurons and a token embedding (synthesized: cns_ray/synth/)."""


@dataclass
class ConceptRecord:
    """One learned concept of a tenant."""

    name: str
    """Validated like tenant names."""
    token: str
    """Placeholder token, e.g. ``<rex>``."""
    class_word: str
    """e.g. ``dog``."""
    neurons: dict[str, torch.Tensor]
    """layer -> sorted unique flat int64 indices into ``[out*in]``."""
    method: str = "cns"
    """``cns``, ``cones`` (indices only, no delta values) or ``synthesized`` (values proposed by the synthesizer:
    stored and served like ``cns``)."""
    stats: dict = field(default_factory=dict)
    """JSON-serialisable (steps, final_loss, n_images, seconds, ...)."""
    version_added: int | None = None
    """The version that first held this concept (set by the store on commit)."""
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Cones: ``[out, in]`` of each layer in ``neurons`` (kept in cones.parquet; a CNS concept's layers are the
    delta's). Lets a commit check the indices in range without the base at hand."""

    @property
    def nnz(self) -> int:
        return sum(int(i.numel()) for i in self.neurons.values())


@dataclass
class TenantState:
    """Everything a tenant has learned, as of one version."""

    tenant: str
    base_id: str
    delta: SparseDelta
    """Cumulative ``W_tenant - W_base``."""
    tokens: dict[str, torch.Tensor]
    """placeholder token -> embedding ``[D]`` float32."""
    concepts: list[ConceptRecord]
    version: int | None = None

    @classmethod
    def empty(cls, tenant: str, base_id: str) -> "TenantState":
        return cls(tenant=tenant, base_id=base_id, delta=SparseDelta.empty(base_id), tokens={}, concepts=[])

    def concept(self, name: str) -> ConceptRecord | None:
        return next((c for c in self.concepts if c.name == name), None)


@dataclass
class VersionInfo:
    """One entry of a tenant's history (from its manifest; no version file is read)."""

    version: int
    parent: int | None
    created_at: str
    message: str
    base_id: str
    concepts: list[str]
    nnz: int
    is_head: bool
