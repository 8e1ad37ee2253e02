"""SparseDeltaLinear against the dense reference ``F.linear(x, W_start.index_put(idx, values), bias)``. (Routing a
UNet's target layers through it, the Trainable plan: tests/unit/test_layers.py.)"""

import pytest
import torch
import torch.nn.functional as F

from cns_ray.learn.sparse_linear import SparseDeltaLinear, patched_weight


def _case(shape, out, nnz, dtype, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=dtype, requires_grad=True)  # [..., in]
    w = torch.randn(out, shape[-1], generator=gen, dtype=dtype)  # [out, in], frozen
    b = torch.randn(out, generator=gen, dtype=dtype, requires_grad=True) if bias else None  # [out]
    idx = torch.randperm(w.numel(), generator=gen)[:nnz].sort().values  # [nnz]
    values = torch.randn(nnz, generator=gen, dtype=dtype, requires_grad=True)  # [nnz]
    return x, w, b, idx, values


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)], ids=["2d", "3d"])
def test_gradcheck_float64(shape):
    x, w, b, idx, values = _case(shape, out=3, nnz=5, dtype=torch.float64)
    assert torch.autograd.gradcheck(SparseDeltaLinear.apply, (x, w, b, idx, values))
    w.requires_grad_(True)  # W_start gets grad everywhere except the overwritten entries
    assert torch.autograd.gradcheck(SparseDeltaLinear.apply, (x, w, None, idx, values))


@pytest.mark.parametrize("bias", [False, True])
def test_matches_dense_reference_float32(bias):
    x, w, b, idx, values = _case((2, 7, 16), out=12, nnz=40, dtype=torch.float32, bias=bias)
    w_before = w.clone()
    grad_out = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(1))  # [B, T, out]
    ref = F.linear(x, patched_weight(w, idx, values), b)
    ref_grads = torch.autograd.grad(ref, [t for t in (x, values, b) if t is not None], grad_out)
    got = SparseDeltaLinear.apply(x, w, b, idx, values)
    got_grads = torch.autograd.grad(got, [t for t in (x, values, b) if t is not None], grad_out)
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert torch.equal(w, w_before)
    assert got_grads[1].shape == values.shape


def test_values_grad_keeps_their_dtype():
    x, w, _, idx, values = _case((3, 8), out=4, nnz=6, dtype=torch.float64, bias=False)
    values32 = values.detach().float().requires_grad_(True)
    SparseDeltaLinear.apply(x, w, None, idx, values32).sum().backward()
    assert values32.grad.dtype == torch.float32 and x.grad.dtype == torch.float64
