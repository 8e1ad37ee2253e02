"""The baselines beside the synthesizer: the nearest library concept, and an embedding-weighted blend of the k
nearest (pure tensor functions on the library's vectors and reference embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cns_ray.errors import InputError


def _sims(library_cond: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    if library_cond.ndim != 2 or embedding.shape != (library_cond.shape[1],):
        raise InputError(f"embedding {tuple(embedding.shape)} vs library embeddings {tuple(library_cond.shape)}: "
                         "they must come from the same metric model")
    return F.normalize(library_cond.float(), dim=-1) @ F.normalize(embedding.float(), dim=-1)  # [N]


def nearest(library_x: torch.Tensor, library_cond: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the state vector [D] of the library concept whose reference embedding is closest in cosine, its row)."""
    i = int(_sims(library_cond, embedding).argmax())
    return library_x[i].clone(), i


def blend(library_x: torch.Tensor, library_cond: torch.Tensor, embedding: torch.Tensor, k: int = 5,
          temperature: float = 0.05) -> torch.Tensor:
    """softmax(cos / temperature)-weighted mean of the k nearest library vectors: [D]."""
    if k < 1 or temperature <= 0:
        raise InputError(f"blend k={k} must be >= 1 and temperature={temperature} > 0")
    s = _sims(library_cond, embedding)
    top = s.topk(min(k, len(s)))
    w = torch.softmax(top.values / temperature, dim=0)  # [k]
    return (w[:, None] * library_x[top.indices].float()).sum(0)


def library_norms(library_x: torch.Tensor, token_dim: int) -> tuple[float, float]:
    """Median norms (delta block, token block) of the library's state vectors ``[N, D]``."""
    return (float(library_x[:, :-token_dim].norm(dim=1).median()), float(library_x[:, -token_dim:].norm(dim=1).median()))


def at_library_norms(vector: torch.Tensor, library_x: torch.Tensor, token_dim: int) -> torch.Tensor:
    """``vector [D]`` with its delta block and its token block each scaled to the library's median norm: the flow at
    temperature 0 proposes states at ~0.7 of a learned state's norm (benchmarks/bench_synth_residual.py)."""
    d_norm, t_norm = library_norms(library_x, token_dim)
    d, t = vector[:-token_dim], vector[-token_dim:]
    return torch.cat([d * (d_norm / d.norm().clamp(min=1e-12)), t * (t_norm / t.norm().clamp(min=1e-12))])
