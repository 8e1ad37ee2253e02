"""cns_ray.layers: the one per-layer operation (swap, per-sample, trainable) and the placeholder-row splice."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cns_ray import cones
from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import BaseMismatchError, CNSError, InputError
from cns_ray.layers import (
    PerSample,
    Swap,
    Trainable,
    add_sample_delta,
    cfg_sample_map,
    placeholder_slots,
    sample_deltas,
    spliced_embeddings,
    target_layers,
)
from cns_ray.learn.sparse_linear import patched_weight

K, V = "attn2.to_k", "attn2.to_v"
BASE = "b0"


def small_unet(seed: int = 0) -> nn.Module:
    """A module with two target layers (``attn2.to_k`` 6x5 with bias, ``attn2.to_v`` 4x5 without)."""
    torch.manual_seed(seed)
    m = nn.Module()
    m.attn2 = nn.Module()
    m.attn2.to_k = nn.Linear(5, 6)
    m.attn2.to_v = nn.Linear(5, 4, bias=False)
    return m.requires_grad_(False)


def delta_of(unet: nn.Module, seed: int, nnz: int = 7) -> SparseDelta:
    g = torch.Generator().manual_seed(seed)
    layers, shapes = {}, {}
    for name in (K, V):
        w = unet.get_submodule(name).weight
        idx = torch.randperm(w.numel(), generator=g)[:nnz].sort().values  # [nnz] sorted unique
        layers[name] = LayerDelta(idx, torch.randn(nnz, generator=g))
        shapes[name] = tuple(w.shape)
    return SparseDelta(BASE, shapes, layers)


def dense(unet: nn.Module, delta: SparseDelta) -> dict[str, torch.Tensor]:
    """``W + dW`` per target, computed independently of the layer op."""
    return delta.applied_to({n: unet.get_submodule(n).weight.detach() for n in (K, V)})


def snapshot(unet: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in unet.state_dict().items()}


def same_as(unet: nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(t, snap[n]) for n, t in unet.state_dict().items()) and not any(
        "forward" in unet.get_submodule(n).__dict__ or unet.get_submodule(n)._forward_hooks for n in (K, V))


# ------------------------------------------------------------------ the sample -> state map
def test_cfg_sample_map_follows_the_pipeline_layout():
    assert cfg_sample_map([0, 1, 1], 7.5).tolist() == [0, 1, 1, 0, 1, 1]  # [uncond images, cond images]
    assert cfg_sample_map([0, 1, 1], 1.0).tolist() == [0, 1, 1]  # guidance off: no uncond half
    assert cfg_sample_map([2, 0], 7.5, time_cond_proj_dim=256).tolist() == [2, 0]  # guidance embedded, no CFG batch
    assert cfg_sample_map([0], 4.0).dtype == torch.int64


def test_per_sample_follows_an_explicit_map_not_the_batch_layout():
    unet = small_unet()
    states = [delta_of(unet, 1), delta_of(unet, 2)]
    want_w = [dense(unet, d) for d in states]
    x = torch.randn(5, 3, 5)  # [S, T, in]
    m = torch.tensor([1, 0, 0, 1, 1])  # not a CFG layout: any row -> any state
    snap = snapshot(unet)
    with torch.no_grad(), target_layers(unet, PerSample(states, m, BASE)):
        first, again = unet.attn2.to_k(x), unet.attn2.to_k(x)  # the second reuses the term computed for this x
        v = unet.attn2.to_v(x)
        other = torch.randn(5, 3, 5)
        new = unet.attn2.to_k(other)
    bias = unet.attn2.to_k.bias
    for s, k in enumerate(m.tolist()):
        torch.testing.assert_close(first[s], F.linear(x[s], want_w[k][K], bias))
        torch.testing.assert_close(again[s], first[s])
        torch.testing.assert_close(v[s], x[s] @ want_w[k][V].T)
        torch.testing.assert_close(new[s], F.linear(other[s], want_w[k][K], bias))
    assert same_as(unet, snap)  # weights never written, forwards back


def test_per_sample_refuses_a_batch_the_map_does_not_describe():
    unet = small_unet()
    states = [delta_of(unet, 1), delta_of(unet, 2)]
    snap = snapshot(unet)
    with pytest.raises(CNSError) as e:  # the caller's layout bug: not an InputError (a 500, not a 422)
        with torch.no_grad(), target_layers(unet, PerSample(states, cfg_sample_map([0, 1], 7.5), BASE)):
            unet.attn2.to_k(torch.randn(2, 3, 5))  # 2 samples, the map is for 4 (guidance doubles the batch)
    msg = str(e.value)
    assert not isinstance(e.value, InputError) and "has 2 samples" in msg and "maps 4" in msg and "cfg_sample_map" in msg
    assert same_as(unet, snap)
    with pytest.raises(InputError, match=r"holds 0\.\.2, there are 2 states.*\[0, 2\)"):
        PerSample(states, torch.tensor([0, 2]), BASE)
    with pytest.raises(InputError, match="int64 \\[S\\] tensor"):
        PerSample(states, torch.tensor([0.0, 1.0]), BASE)
    foreign = SparseDelta("other", states[0].shapes, states[0].layers)
    with pytest.raises(BaseMismatchError):  # checked before any layer is routed
        with target_layers(unet, PerSample([states[0], foreign], torch.tensor([0, 1]), BASE)):
            raise AssertionError("not reached")
    assert same_as(unet, snap)


def test_sparse_term_equals_the_dense_delta_matmul():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 5, generator=g)  # [out, in]
    idx = torch.tensor([0, 7, 13, 29])  # flat [out*in]
    val = torch.randn(4, generator=g)
    dw = torch.zeros(30).index_add_(0, idx, val).view(6, 5)  # [out, in]
    x = torch.randn(3, 5, generator=g)  # [T, in]
    (d,) = sample_deltas(SparseDelta("b", {"l": (6, 5)}, {"l": LayerDelta(idx, val)}), {"l": w}, "b").values()
    out = x @ w.T
    add_sample_delta(out, x, d)
    torch.testing.assert_close(out, x @ (w + dw).T)


# ------------------------------------------------------------------ swap
def test_swap_writes_inside_and_restores_bit_for_bit_also_on_an_exception():
    unet = small_unet()
    delta = delta_of(unet, 3)
    snap = snapshot(unet)
    want = dense(unet, delta)
    with target_layers(unet, Swap(delta, BASE)):
        assert torch.equal(unet.attn2.to_k.weight, want[K]) and torch.equal(unet.attn2.to_v.weight, want[V])
    assert same_as(unet, snap)
    with pytest.raises(RuntimeError, match="boom"):
        with target_layers(unet, Swap(delta, BASE)):
            assert not torch.equal(unet.attn2.to_k.weight, snap["attn2.to_k.weight"])
            raise RuntimeError("boom")
    assert same_as(unet, snap)
    with pytest.raises(BaseMismatchError):  # nothing written on a refused delta
        with target_layers(unet, Swap(delta, "another")):
            pass
    assert same_as(unet, snap)


def test_per_sample_equals_swap_for_two_tenants_in_one_unet_batch(tiny_base):
    """Two tenant states in one batch of the real UNet (CFG layout, guidance on): each image as with its state
    swapped in, up to float rounding; the shared weights bit-identical after."""
    from serve_states import random_state

    unet = tiny_base.unet
    weights = tiny_base.target_weights()
    before = {n: w.detach().clone() for n, w in weights.items()}
    states = [random_state(tiny_base, t, seed=s, density=0.02, scale=0.2).delta for t, s in (("a", 1), ("b", 2))]
    cones_shut = cones.with_shut(states[1], weights, {n: torch.arange(0, 40, 3) for n in list(weights)[:3]})
    states[1] = cones_shut  # the second tenant also has a Cones concept shut on top (shut wins)
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    noisy = torch.randn(2, cfg.in_channels, 8, 8, generator=g)  # [N, C, h, w]
    text = torch.randn(2, 6, cfg.cross_attention_dim, generator=g)  # [N, T, D]
    t = torch.tensor([10])
    m = cfg_sample_map([0, 1], 7.5)  # [4]
    x, c = torch.cat([noisy, noisy]), torch.cat([text, text])  # [uncond images, cond images]
    with torch.no_grad():
        with target_layers(unet, PerSample(states, m, tiny_base.base_id)):
            mixed = unet(x, t, encoder_hidden_states=c).sample  # [4, C, h, w]
        for s, k in enumerate(m.tolist()):
            with target_layers(unet, Swap(states[k], tiny_base.base_id)):
                alone = unet(x[s : s + 1], t, encoder_hidden_states=c[s : s + 1]).sample
            torch.testing.assert_close(mixed[s : s + 1], alone, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(mixed[0], mixed[1], atol=1e-3)  # the two states do differ
    assert all(torch.equal(w, before[n]) for n, w in weights.items())
    assert all("forward" not in mod.__dict__ for mod in tiny_base.target_modules().values())


# ------------------------------------------------------------------ trainable
@pytest.mark.parametrize("name", [K, V])
def test_trainable_grads_equal_autograd_through_index_put_and_linear(name):
    unet = small_unet()
    mod = unet.get_submodule(name)
    g = torch.Generator().manual_seed(4)
    start = (mod.weight.detach() + 0.1 * torch.randn(mod.weight.shape, generator=g))  # [out, in], frozen
    idx = torch.tensor([1, 4, 9, 13])  # [nnz]
    values = torch.randn(4, generator=g, requires_grad=True)  # [nnz]
    x = torch.randn(2, 3, 5, generator=g, requires_grad=True)  # [B, T, in]
    ref = F.linear(x, start.reshape(-1).index_put((idx,), values).view(start.shape), mod.bias)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, values])
    snap = snapshot(unet)
    with target_layers(unet, Trainable({name: start}, {name: (idx, values)})):
        got = mod(x)
    got_grads = torch.autograd.grad(got.square().sum(), [x, values])
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert same_as(unet, snap)


def test_trainable_routes_the_real_unet_like_functional_call_and_restores(tiny_base):
    """On the tiny UNet: routed K/V layers give the same output and grads as the functional_call reference."""
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
    ref_w = {f"{n}.weight": patched_weight(start[n], idx[n], values[n]) for n in names}
    ref = functional_call(unet, ref_w, (noisy, t), {"encoder_hidden_states": cond}).sample
    ref_grads = torch.autograd.grad(ref.square().mean(), [cond, *values.values()])
    with target_layers(unet, Trainable(start, {n: (idx[n], values[n]) for n in names})):
        got = unet(noisy, t, encoder_hidden_states=cond).sample
    got_grads = torch.autograd.grad(got.square().mean(), [cond, *values.values()])
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert all("forward" not in m.__dict__ for m in modules.values())  # the class forward is back
    assert all(torch.equal(m.weight, before[n]) for n, m in modules.items())
    plain = unet(noisy, t, encoder_hidden_states=cond).sample
    assert not torch.allclose(plain, got)  # the values did change the output inside the block only


def test_trainable_restores_after_an_error_and_checks_names_and_shapes():
    unet = small_unet()
    mod = unet.attn2.to_k
    with pytest.raises(RuntimeError, match="boom"):
        with target_layers(unet, Trainable({K: mod.weight.detach()})):
            assert "forward" in mod.__dict__
            raise RuntimeError("boom")
    assert "forward" not in mod.__dict__
    with pytest.raises(InputError, match=r"shape \(2, 2\), the layer's is \(6, 5\).*pass weights made for this base"):
        with target_layers(unet, Trainable({K: torch.zeros(2, 2)})):
            pass
    with pytest.raises(InputError, match="'nope' is not a target layer of this UNet"):
        with target_layers(unet, Trainable({"nope": torch.zeros(2, 2)})):
            pass
    with pytest.raises(InputError, match="sparse values but no start weight"):
        with target_layers(unet, Trainable({}, {K: (torch.tensor([0]), torch.zeros(1))})):
            pass
    assert "forward" not in mod.__dict__


# ------------------------------------------------------------------ placeholder rows
def test_spliced_embeddings_per_sample_with_grads_and_shape_checks(tiny_base):
    te = tiny_base.text_encoder
    dim = te.get_input_embeddings().weight.shape[1]
    table = te.get_input_embeddings().weight.detach().clone()
    ids = torch.tensor([[1, 5, 7, 5], [1, 7, 7, 2]])  # [B, T]
    slots = placeholder_slots(ids, [5, 7])  # 5 -> vector 0, 7 -> vector 1
    assert slots.tolist() == [[-1, 0, 1, 0], [-1, 1, 1, -1]]
    vecs = [torch.randn(dim, requires_grad=True), torch.randn(dim, requires_grad=True)]
    with spliced_embeddings(te, slots, vecs):
        out = te.get_input_embeddings()(ids)  # [B, T, D]
    want = table[ids].clone()
    want[slots == 0] = vecs[0].detach()
    want[slots == 1] = vecs[1].detach()
    assert torch.equal(out.detach(), want)
    out.sum().backward()
    assert torch.equal(vecs[0].grad, torch.full((dim,), 2.0)) and torch.equal(vecs[1].grad, torch.full((dim,), 3.0))
    assert not te.get_input_embeddings()._forward_hooks and torch.equal(te.get_input_embeddings().weight, table)
    with pytest.raises(CNSError, match=r"text batch is \(1, 4\).*slots are \(2, 4\)"):
        with spliced_embeddings(te, slots, vecs):
            te.get_input_embeddings()(ids[:1])
    with pytest.raises(InputError, match=rf"shape \(3,\), the text encoder's embeddings are \[{dim}\]"):
        with spliced_embeddings(te, slots, [torch.zeros(3)]):
            pass
    assert not te.get_input_embeddings()._forward_hooks
