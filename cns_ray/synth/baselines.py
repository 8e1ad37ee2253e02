"""The baselines beside the synthesizer: the nearest library concept, an embedding-weighted blend of the k nearest,
and the kernel-ridge combination of the whole library (pure tensor functions on the library's vectors and reference
embeddings)."""

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


def kernel_weights(library_cond: torch.Tensor, gamma: float = 2.0, lam: float = 0.3) -> torch.Tensor:
    """``(K + lam I)^-1`` for the library's kernel ``K_ij = exp(gamma (cos_ij - 1))`` on its reference embeddings:
    [N, N]. Kernel ridge regression from embedding to state (a Gaussian process's posterior mean): the library's
    linear combination fitted to the library itself, where :func:`blend` weighs neighbours by similarity alone."""
    if gamma <= 0 or lam <= 0:
        raise InputError(f"kernel gamma={gamma} and lam={lam} must both be > 0 (defaults 2.0 and 0.3)")
    c = F.normalize(library_cond.float(), dim=-1)  # [N, c]
    k = torch.exp(gamma * (c @ c.T - 1))  # [N, N]
    return torch.linalg.inv(k + lam * torch.eye(k.shape[0]))


def kernel(library_x: torch.Tensor, library_cond: torch.Tensor, embedding: torch.Tensor, gamma: float = 2.0,
           lam: float = 0.3, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel-ridge proposal ``mean + k(c)^T (K + lam I)^-1 (X - mean)``: [D]. ``gamma``/``lam``: the best of
    {1, 2, 3} x {0.1, 0.3, 1} by 5-fold state-space cosine on the library (docs/synthesis.md). ``weights``:
    :func:`kernel_weights` of the same library, to reuse."""
    s = _sims(library_cond, embedding)  # [N]
    w = kernel_weights(library_cond, gamma, lam) if weights is None else weights
    mean = library_x.float().mean(0)  # [D]
    return mean + (torch.exp(gamma * (s - 1)) @ w) @ (library_x.float() - mean)


def library_norms(library_x: torch.Tensor, token_dim: int) -> tuple[float, float]:
    """Median norms (delta block, token block) of the library's state vectors ``[N, D]``."""
    return (float(library_x[:, :-token_dim].norm(dim=1).median()), float(library_x[:, -token_dim:].norm(dim=1).median()))


def at_library_norms(vector: torch.Tensor, library_x: torch.Tensor, token_dim: int) -> torch.Tensor:
    """``vector [D]`` with its delta block and its token block each scaled to the library's median norm: the flow at
    temperature 0 proposes states at ~0.7 of a learned state's norm (benchmarks/bench_synth_residual.py)."""
    d_norm, t_norm = library_norms(library_x, token_dim)
    d, t = vector[:-token_dim], vector[-token_dim:]
    return torch.cat([d * (d_norm / d.norm().clamp(min=1e-12)), t * (t_norm / t.norm().clamp(min=1e-12))])
