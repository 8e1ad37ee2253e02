"""Neuron scores and masks: plain tensor functions, no Ray, no I/O, no model.

Score (Wanda-style) of a target weight for a text embedding ``c`` of shape ``[tokens, in]``::

    n[j]    = || c[:, j] ||_2          over the non-padding tokens        # [in]
    S[i, j] = |W[i, j]| * n[j]                                             # [out, in]
    M(c)    = top ``select_ratio`` of S within each output row i           # bool [out, in]

Base neurons AND M over a concept's captions; general neurons AND M over calibration prompts;
concept neurons = base AND NOT general.
"""

from __future__ import annotations

import math

import numpy as np
import torch

Masks = dict[str, torch.Tensor]  # stable layer name -> bool [out, in]


def feature_norms(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-feature L2 norm over the non-padding tokens.

    hidden: [P, T, D] text-encoder last hidden states; attention_mask: [P, T] (1 = real token).
    Returns [P, D] float32.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [P, T, D] and mask {tuple(attention_mask.shape)} [P, T]")
    h = hidden.float() * attention_mask.to(torch.float32).unsqueeze(-1)  # [P, T, D]
    return h.pow(2).sum(dim=1).sqrt()  # [P, D]


def neuron_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W| * n. weight [out, in]; norms [in] or [P, in] -> [out, in] or [P, out, in]."""
    return weight.detach().float().abs() * norms.float().unsqueeze(-2)


def row_k(in_features: int, ratio: float) -> int:
    """Number of entries kept per output row: ceil(ratio * in), at least 1."""
    return max(1, min(in_features, math.ceil(ratio * in_features - 1e-9)))


def row_topk_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Top ``ratio`` of each row (last dim). scores [..., out, in] -> bool [..., out, in]."""
    k = row_k(scores.shape[-1], ratio)
    idx = scores.topk(k, dim=-1, sorted=False).indices  # [..., out, k]
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(-1, idx, True)


def and_select(weight: torch.Tensor, norms: torch.Tensor, ratio: float, chunk: int = 8) -> torch.Tensor:
    """AND over prompts of the per-prompt top-ratio masks. weight [out, in]; norms [P, in] -> bool [out, in]."""
    if norms.dim() != 2 or norms.shape[1] != weight.shape[1]:
        raise ValueError(
            f"norms {tuple(norms.shape)} must be [P, {weight.shape[1]}] to score a weight of shape {tuple(weight.shape)}"
        )
    norms = norms.to(weight.device)
    acc = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)  # [out, in]
    for start in range(0, norms.shape[0], chunk):
        m = row_topk_mask(neuron_scores(weight, norms[start : start + chunk]), ratio)  # [c, out, in]
        acc &= m.all(dim=0)
    return acc


def select_masks(weights: dict[str, torch.Tensor], norms: torch.Tensor, ratio: float, chunk: int = 8) -> Masks:
    """AND-selected masks for every layer. weights: name -> [out, in]; norms: [P, in]."""
    return {name: and_select(w, norms, ratio, chunk) for name, w in weights.items()}


def and_reduce(parts: list[Masks]) -> Masks:
    """AND of several mask sets over the same layers (e.g. per-shard general masks)."""
    if not parts:
        raise ValueError("and_reduce needs at least one mask set")
    names = set(parts[0])
    for p in parts[1:]:
        if set(p) != names:
            raise ValueError(f"mask sets cover different layers: {sorted(names ^ set(p))}")
    out = {}
    for name in parts[0]:
        acc = parts[0][name].clone()
        for p in parts[1:]:
            acc &= p[name]
        out[name] = acc
    return out


def concept_masks(base: Masks, general: Masks) -> Masks:
    """concept = base AND NOT general, per layer."""
    if set(base) != set(general):
        raise ValueError(f"base and general masks cover different layers: {sorted(set(base) ^ set(general))}")
    return {n: base[n] & ~general[n] for n in base}


def mean_scores(weights: dict[str, torch.Tensor], norms: torch.Tensor) -> dict[str, torch.Tensor]:
    """Score of each weight averaged over prompts: |W| * mean_p n_p. -> name -> [out, in]."""
    n = norms.float().mean(dim=0)  # [in]
    return {name: neuron_scores(w, n) for name, w in weights.items()}


def cap_to_budget(masks: Masks, scores: dict[str, torch.Tensor], budget: float) -> Masks:
    """Keep at most ``budget`` (fraction of all target weights) selected entries, highest score first."""
    total = sum(m.numel() for m in masks.values())
    limit = int(budget * total)
    selected = sum(int(m.sum()) for m in masks.values())
    if selected <= limit:
        return {n: m.clone() for n, m in masks.items()}
    names = list(masks)
    flat = torch.cat([torch.where(masks[n], scores[n], torch.tensor(-1.0)).flatten() for n in names])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if limit > 0:
        keep[flat.topk(limit).indices] = True
    out, off = {}, 0
    for n in names:
        size = masks[n].numel()
        out[n] = keep[off : off + size].view(masks[n].shape) & masks[n]
        off += size
    return out


def exclusive_refill(concept: Masks, general: Masks, held: Masks, scores: dict[str, torch.Tensor]) -> Masks:
    """``concept`` without the entries in ``held`` (a tenant's earlier concepts), filled back up per layer to its
    count with the highest-``scores`` entries that are neither general nor held (nor already kept).

    All name -> bool [out, in] (``scores``: float [out, in]); a layer missing from ``held`` holds nothing. A layer
    whose free entries run out keeps all of them (fewer than its count)."""
    out = {}
    for n, m in concept.items():
        h = held.get(n)
        if h is None or not bool((m & h).any()):
            out[n] = m.clone()
            continue
        keep = m & ~h  # [out, in]
        need = int(m.sum()) - int(keep.sum())
        pool = ~general[n] & ~h & ~keep  # [out, in]
        flat = torch.where(pool, scores[n].float(), torch.tensor(-1.0)).flatten()  # scores are >= 0
        take = min(need, int(pool.sum()))
        extra = torch.zeros_like(flat, dtype=torch.bool)
        if take > 0:
            extra[flat.topk(take).indices] = True
        out[n] = keep | (extra.view(m.shape) & pool)
    return out


def mask_fraction(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()) / max(total, 1)


def layer_fractions(masks: Masks) -> dict[str, float]:
    return {n: float(m.float().mean()) for n, m in masks.items()}


def mask_to_indices(mask: torch.Tensor) -> torch.Tensor:
    """Sorted flat int64 indices (into [out*in]) of the True entries."""
    return mask.flatten().nonzero().squeeze(1)


def indices_to_mask(indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    m[indices.long()] = True
    return m.view(shape)


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """bool [out, in] -> uint8 bit-packed [ceil(out*in/8)]."""
    return np.packbits(mask.detach().flatten().cpu().numpy().astype(np.uint8))


def unpack_mask(packed: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    n = shape[0] * shape[1]
    if packed.size * 8 < n or packed.size * 8 - n >= 8:
        raise ValueError(f"packed mask has {packed.size} bytes, shape {shape} needs {math.ceil(n / 8)}")
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), count=n).astype(bool)
    return torch.from_numpy(bits).view(shape)


def pack_masks(masks: Masks) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
    return {n: (pack_mask(m), tuple(m.shape)) for n, m in masks.items()}


def unpack_masks(packed: dict[str, tuple[np.ndarray, tuple[int, int]]]) -> Masks:
    return {n: unpack_mask(p, s) for n, (p, s) in packed.items()}
