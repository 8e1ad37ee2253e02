"""L_reg of continual CNS learning: pure tensor math, no model, no I/O.

For concept ``m``, on its selected entries of each target layer::

    target = W^(m-1)   on entries that earlier concepts of the tenant also selected (keep what they learned)
    target = W^(0)     elsewhere (stay near the pretrained weights)
    L_reg  = mean over all selected entries of (W - target)^2

All tensors are flat vectors over a layer's selected entries, ``[nnz]``.

What this amounts to: learning concept ``m`` starts from ``W^(m-1)``, and ``W^(m-1) = W^(0)`` on every entry no
earlier concept selected (the tenant's delta lives only on earlier concepts' neurons). So both targets are the
entry's value at the start of this concept's learning, and ``L_reg`` is an L2 pull of the selected entries towards
their starting values (a trust region around ``W^(m-1)``); the two named targets only differ if a state is edited
between concepts (e.g. a concept deleted, which resets its neurons to ``W^(0)``).
"""

from __future__ import annotations

from typing import Mapping

import torch


def reg_targets(previous: torch.Tensor, pretrained: torch.Tensor, overlap: torch.Tensor) -> torch.Tensor:
    """Per-entry target: ``previous`` where ``overlap`` (bool), else ``pretrained``. All [nnz] -> [nnz]."""
    if not (previous.shape == pretrained.shape == overlap.shape):
        raise ValueError(
            f"previous {tuple(previous.shape)}, pretrained {tuple(pretrained.shape)} and overlap "
            f"{tuple(overlap.shape)} must have one shape [nnz]"
        )
    return torch.where(overlap.bool(), previous, pretrained)


def overlap_mask(selected: torch.Tensor, earlier: torch.Tensor | None) -> torch.Tensor:
    """bool [nnz]: which of the sorted flat ``selected`` indices are among the ``earlier`` concepts' indices."""
    if earlier is None or earlier.numel() == 0:
        return torch.zeros(selected.shape, dtype=torch.bool, device=selected.device)
    return torch.isin(selected, earlier.to(selected.device))


def l_reg(values: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean over every selected entry of every layer of ``(values - targets)^2``; 0 when nothing is selected.

    values: name -> [nnz] (trainable); targets: name -> [nnz] (constants).
    """
    missing = sorted(set(values) ^ set(targets))
    if missing:
        raise ValueError(f"values and targets cover different layers: {missing}")
    total, count = None, 0
    for name, v in values.items():
        t = targets[name]
        if v.shape != t.shape:
            raise ValueError(f"layer {name!r}: values {tuple(v.shape)} vs targets {tuple(t.shape)}")
        s = (v.float() - t.float()).pow(2).sum()
        total = s if total is None else total + s
        count += v.numel()
    if total is None or count == 0:
        ref = next(iter(values.values()), None)
        return torch.zeros((), device=ref.device if ref is not None else "cpu")
    return total / count


def text_gram(hidden: torch.Tensor) -> torch.Tensor:
    """``C^T C / M`` of text-encoder rows ``hidden [..., D]`` (all positions, M rows): ``[D, D]``, float32.

    The K/V change of a cross-attention weight delta ``dW [out, D]`` over those rows is then
    ``||dW C^T||^2 / M = sum((dW @ G) * dW)``, whatever M is."""
    rows = hidden.reshape(-1, hidden.shape[-1]).float()  # [M, D]
    return rows.T @ rows / max(1, rows.shape[0])


def kv_preservation(
    values: Mapping[str, torch.Tensor], start: Mapping[str, torch.Tensor], indices: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]], gram: torch.Tensor,
) -> torch.Tensor:
    """Mean squared change of the target layers' keys/values on the preserved prompts' text rows.

    values, start, indices: name -> [nnz] (the learned values, their values at the start, their flat indices into
    ``[out*in]``); shapes: name -> (out, in); gram: ``[in, in]`` (:func:`text_gram`). Returns
    ``sum_n sum((dW_n @ G) * dW_n) / sum_n out_n``: the K/V change per output element per preserved text row."""
    total, outs = None, 0
    for name, v in values.items():
        out_f, in_f = shapes[name]
        if gram.shape != (in_f, in_f):
            raise ValueError(f"layer {name!r}: input width {in_f} vs gram {tuple(gram.shape)}")
        dw = torch.zeros(out_f * in_f, dtype=torch.float32, device=v.device).index_put(
            (indices[name],), v.float() - start[name].float()).view(out_f, in_f)  # [out, in], sparse in effect
        s = ((dw @ gram.to(dw.device)) * dw).sum()
        total = s if total is None else total + s
        outs += out_f
    if total is None:
        return torch.zeros((), device=gram.device)
    return total / outs
