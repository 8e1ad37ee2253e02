"""A linear layer whose weight is ``W_start`` with a trainable values vector on a few entries, without dense copies.

``y = F.linear(x, W_start.index_put(idx, values), bias)`` computed by :class:`SparseDeltaLinear`, which keeps
for backward only ``x``, ``idx``, ``values`` and a reference to the frozen ``W_start`` (no copy). The patched weight
exists only inside the layer's forward and again briefly inside its backward (for the input grad), and the dense
weight grad only until its selected entries are gathered; so a forward through many such layers holds no
per-layer ``[out, in]`` tensors until backward, unlike autograd through ``index_put`` + ``F.linear``.

:func:`cns_ray.layers.target_layers` with a :class:`~cns_ray.layers.Trainable` plan routes the UNet's target
linears through it for the duration of a ``with`` block (the learners); the modules' parameters are never written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patched_weight(w_start: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A new ``[out, in]`` tensor: ``w_start`` with its flat entries ``idx`` set to ``values`` (cast to its dtype)."""
    return w_start.reshape(-1).index_put((idx,), values.to(w_start.dtype)).view(w_start.shape)


class SparseDeltaLinear(torch.autograd.Function):
    """``F.linear(x, W_start.index_put(idx, values), bias)``; differentiable in ``x``, ``values`` (and ``bias``).

    x: ``[..., in]``; w_start: ``[out, in]``; bias: ``[out]`` or ``None``; idx: ``[nnz]`` int64 flat indices into
    ``w_start`` (distinct); values: ``[nnz]`` (any float dtype, cast to ``w_start``'s; its grad comes back in its own).
    """

    @staticmethod
    def forward(ctx, x, w_start, bias, idx, values):  # noqa: D102 (autograd API)
        out = F.linear(x, patched_weight(w_start, idx, values), bias)  # [..., out]; the patched W dies here
        ctx.save_for_backward(x, w_start, idx, values)  # references, no copies
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102 (autograd API)
        x, w_start, idx, values = ctx.saved_tensors
        need_x, need_w, need_b, _, need_v = ctx.needs_input_grad
        grad_x = grad_w = grad_b = grad_v = None
        if need_x:
            grad_x = grad_out.matmul(patched_weight(w_start, idx, values))  # [..., in]
        if need_b:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)  # [out]
        if need_w or need_v:
            g2 = grad_out.reshape(-1, grad_out.shape[-1])  # [N, out]
            x2 = x.reshape(-1, x.shape[-1])  # [N, in]
            dense = g2.t().mm(x2)  # [out, in], transient
            flat = dense.view(-1)
            if need_v:
                grad_v = flat.index_select(0, idx).to(values.dtype)  # [nnz]
            if need_w:  # entries at idx are overwritten by values, so W_start gets no grad there
                grad_w = flat.index_fill(0, idx, 0).view(w_start.shape)
        return grad_x, grad_w, grad_b, None, grad_v


def sparse_delta_linear(
    x: torch.Tensor, w_start: torch.Tensor, bias: torch.Tensor | None, idx: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Functional form of :class:`SparseDeltaLinear` (``x [..., in]`` -> ``[..., out]``)."""
    return SparseDeltaLinear.apply(x, w_start, bias, idx, values)
