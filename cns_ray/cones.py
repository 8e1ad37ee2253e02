"""Cones (Liu et al. 2023, arXiv 2303.05125): concept neurons by gradient statistics, shutting, concatenation.

Plain tensor functions, no Ray, no I/O, no model (the learner, the store and serving call them).

**Score.** For a target weight ``W`` (``[out, in]``) and the gradient ``g = dL_con/dW`` of the concept-implanting
loss (the diffusion loss on the concept's images with the concept's prompt), the first-order change of ``L_con``
when entry ``(i, j)`` is set to zero is ``-W[i, j] * g[i, j]``. So ``S = W * g > 0`` means "shutting this entry
lowers the loss". ``S`` is summed over K steps (different images, timesteps and noise), which averages out the
per-step noise of a single-sample gradient.

**Selection rule (implemented).** Per layer, keep the entries with accumulated score ``S > 0``, at most
``ceil(ratio * out * in)`` of them, highest ``S`` first; ties are broken by the lower flat index (a stable sort),
so the selection is a deterministic function of ``(W, grads)``. Why not the paper's self-adaptive sampling (shut a
cluster, re-evaluate the loss, repeat while it drops): that needs a full loss evaluation per candidate cluster and
many more steps, too costly for the CPU-sized runs here; a fixed per-layer budget gives a predictable concept size
and keeps one layer from taking the whole budget. Only positive scores qualify: an entry whose zeroing raises the
loss to first order is never shut, whatever the budget.

**Shutting** sets the entries to zero. As a served change it is ``-W[idx]`` at the indices (``W + (-W) == 0``
exactly in IEEE arithmetic), derived at load from the base: a Cones concept stores indices only.

**Concatenation.** A prompt that names several Cones concepts shuts the union of their index sets.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import DeltaValidationError

Indices = dict[str, torch.Tensor]  # stable layer name -> sorted unique int64 flat indices into [out * in]


def weight_grad_score(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``W * g`` in float32 [out, in]: minus the first-order loss change of setting each entry to zero."""
    if weight.shape != grad.shape:
        raise ValueError(f"weight {tuple(weight.shape)} and its gradient {tuple(grad.shape)} must have one shape")
    return weight.detach().float() * grad.detach().float()


def accumulate_scores(acc: dict[str, torch.Tensor], weights: Mapping[str, torch.Tensor],
                      grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``acc[name] += W * g`` for every layer in ``grads`` (in place; a missing layer starts at zero). Returns acc."""
    for name, g in grads.items():
        s = weight_grad_score(weights[name], g)  # [out, in]
        if name in acc:
            acc[name] += s.to(acc[name].device)
        else:
            acc[name] = s
    return acc


def layer_budget(numel: int, ratio: float) -> int:
    """Most entries one layer may shut: ``ceil(ratio * numel)`` (0 when ratio is 0)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio={ratio} must be in [0, 1] (the fraction of a layer's weights a concept may shut)")
    return min(numel, math.ceil(ratio * numel - 1e-9))


def select_layer(score: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted int64 flat indices of the top positive entries of ``score`` [out, in] (see the module docstring)."""
    flat = score.detach().float().reshape(-1).cpu()  # [out*in]
    k = layer_budget(flat.numel(), ratio)
    positive = int((flat > 0).sum())
    k = min(k, positive)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(-flat, stable=True).indices  # highest first; equal scores keep ascending index order
    return torch.sort(order[:k]).values.to(torch.int64)


def select_neurons(scores: Mapping[str, torch.Tensor], ratio: float) -> Indices:
    """Per layer :func:`select_layer`; layers with no selected entry are left out."""
    out = {}
    for name, s in scores.items():
        idx = select_layer(s, ratio)
        if idx.numel():
            out[name] = idx
    return out


def union(sets: Iterable[Mapping[str, torch.Tensor]]) -> Indices:
    """Concatenation of several concepts: per layer the sorted unique union of their index sets."""
    parts: dict[str, list[torch.Tensor]] = {}
    for s in sets:
        for name, idx in s.items():
            parts.setdefault(name, []).append(idx.to(torch.int64).reshape(-1).cpu())
    return {n: torch.unique(torch.cat(p)) for n, p in sorted(parts.items()) if sum(x.numel() for x in p)}


def shut_delta(weights: Mapping[str, torch.Tensor], indices: Mapping[str, torch.Tensor], base_id: str) -> SparseDelta:
    """The served change of shutting ``indices``: ``-W`` there (``W + delta == 0`` exactly), in ``W``'s dtype/device.

    ``weights`` are the values the shut applies to (the base's). Raises :class:`DeltaValidationError` listing every
    layer whose indices are not sorted, unique and in range, or that is not in ``weights``; nothing is written here.
    """
    problems = []
    for name, idx in indices.items():
        if name not in weights:
            problems.append(f"Cones neurons on layer {name!r}, which is not a target layer of this base "
                            f"({len(weights)} targets): the concept was made for another base model")
            continue
        numel = weights[name].numel()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
            problems.append(f"layer {name!r}: Cones index {int(idx.max())} (min {int(idx.min())}), the layer has {numel} "
                            "entries: the concept was made for another base model or is corrupt; relearn or roll back")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            problems.append(f"layer {name!r}: Cones indices are not sorted unique (use cones.union)")
    if problems:
        raise DeltaValidationError(problems, source="Cones neurons to shut")
    shapes, layers = {}, {}
    for name, idx in indices.items():
        w = weights[name]  # [out, in]
        i = idx.to(device=w.device, dtype=torch.int64)
        if i.numel() == 0:
            continue
        layers[name] = LayerDelta(i, -w.detach().reshape(-1).index_select(0, i))
        shapes[name] = tuple(w.shape)
    return SparseDelta(base_id, shapes, layers)


def with_shut(delta: SparseDelta, weights: Mapping[str, torch.Tensor], indices: Mapping[str, torch.Tensor]) -> SparseDelta:
    """``delta`` (e.g. a tenant's CNS delta) with ``indices`` shut. Precedence: **a shut weight is zero whatever the
    delta says there** (the shut entries replace the delta's entries at those indices)."""
    if not indices:
        return delta
    shut = shut_delta(weights, indices, delta.base_id)
    if not delta.layers:
        return shut
    dev = next(iter(shut.layers.values())).index.device if shut.layers else None
    moved = SparseDelta(delta.base_id, dict(delta.shapes),
                        {n: LayerDelta(d.index.to(dev), d.value.to(device=dev, dtype=weights[n].dtype))
                         for n, d in delta.layers.items()}) if dev is not None else delta
    return moved.merge(shut)
