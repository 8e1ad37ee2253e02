"""SparseDeltaLinear against the dense reference ``F.linear(x, W_start.index_put(idx, values), bias)``."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from cns_ray.errors import InputError
from cns_ray.learn.sparse_linear import SparseDeltaLinear, patched_linears, patched_weight


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


def test_patched_unet_matches_functional_call_and_restores(tiny_base):
    """On the real tiny UNet: routed K/V linears give the same output and grads as the functional_call reference."""
    unet = tiny_base.unet
    modules = tiny_base.target_modules()
    before = {n: m.weight.detach().clone() for n, m in modules.items()}
    gen = torch.Generator().manual_seed(0)
    names = list(modules)[:3]
    idx = {n: torch.randperm(modules[n].weight.numel(), generator=gen)[:50].sort().values for n in names}
    values = {n: torch.randn(50, generator=gen).requires_grad_(True) for n in names}
    start = {n: m.weight.detach() for n, m in modules.items()}
    cfg = unet.config
    noisy = torch.randn(1, cfg.in_channels, 8, 8, generator=gen)  # [B, C, h, w]
    cond = torch.randn(1, 5, cfg.cross_attention_dim, generator=gen, requires_grad=True)  # [B, T, D]
    t = torch.tensor([10])

    dense = {f"{n}.weight": patched_weight(start[n], idx[n], values[n]) for n in names}
    ref = functional_call(unet, dense, (noisy, t), {"encoder_hidden_states": cond}).sample
    ref_grads = torch.autograd.grad(ref.square().mean(), [cond, *values.values()])
    with patched_linears(modules, start, {n: (idx[n], values[n]) for n in names}):
        got = unet(noisy, t, encoder_hidden_states=cond).sample
    got_grads = torch.autograd.grad(got.square().mean(), [cond, *values.values()])
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert all("forward" not in m.__dict__ for m in modules.values())  # the class forward is back
    for n, m in modules.items():
        assert torch.equal(m.weight, before[n]), n
    plain = unet(noisy, t, encoder_hidden_states=cond).sample
    assert not torch.allclose(plain, got)  # the values did change the output inside the block only


def test_patched_linears_restores_after_error_and_checks_shapes(tiny_base):
    modules = tiny_base.target_modules()
    name, mod = next(iter(modules.items()))
    with pytest.raises(RuntimeError, match="boom"):
        with patched_linears(modules, {name: mod.weight.detach()}):
            assert "forward" in mod.__dict__
            raise RuntimeError("boom")
    assert "forward" not in mod.__dict__
    with pytest.raises(InputError, match=r"shape \(2, 2\).*pass weights made for these modules"):
        with patched_linears(modules, {name: torch.zeros(2, 2)}):
            pass
    with pytest.raises(InputError, match="'nope' is missing"):
        with patched_linears(modules, {"nope": torch.zeros(2, 2)}):
            pass
