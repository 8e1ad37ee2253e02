"""SparseDelta: validation before any write, exact apply/restore, merge/add/without."""

from __future__ import annotations

import pytest
import torch

from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.errors import BaseMismatchError, DeltaValidationError
from cns_ray.layers import apply_, restore_, swapped

BASE = "base0123456789ab"


def sd15_kv_weights(seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The 32 cross-attention K/V weights of an SD-1.5 UNet (names and [out, 768] shapes), random values
    (``device="meta"``: shapes only, no memory)."""
    blocks = []
    for b, ch in enumerate((320, 640, 1280)):
        blocks += [(f"down_blocks.{b}.attentions.{a}", ch) for a in range(2)]
    for b, ch in zip((1, 2, 3), (1280, 640, 320)):
        blocks += [(f"up_blocks.{b}.attentions.{a}", ch) for a in range(3)]
    blocks.append(("mid_block.attentions.0", 1280))
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, ch in blocks:
        for proj in ("to_k", "to_v"):
            name = f"{prefix}.transformer_blocks.0.attn2.{proj}"
            out[name] = torch.empty(ch, 768, device="meta") if device == "meta" else torch.randn(ch, 768, generator=g) * 0.02
    return dict(sorted(out.items()))


def random_delta(weights, density: float, base_id: str = BASE, seed: int = 0, dtype=torch.float16) -> SparseDelta:
    g = torch.Generator().manual_seed(seed)
    shapes, layers = {}, {}
    for name, w in weights.items():
        n = w.numel()
        k = max(1, int(density * n))
        idx = torch.unique(torch.randint(0, n, (k,), generator=g))  # [<=k] int64, sorted, unique
        layers[name] = LayerDelta(idx, (torch.randn(idx.numel(), generator=g) * 1e-3).to(dtype))
        shapes[name] = tuple(w.shape)
    return SparseDelta(base_id, shapes, layers)


def snapshot(weights):
    return {n: w.detach().clone() for n, w in weights.items()}


def assert_bit_identical(weights, snap):
    for n, w in weights.items():
        assert torch.equal(w.view(torch.int32), snap[n].view(torch.int32)), f"{n} changed"


def test_sd15_shapes_match_the_real_model():
    w = sd15_kv_weights(device="meta")
    assert len(w) == 32
    assert sum(t.numel() for t in w.values()) == 19_169_280


def test_apply_restore_bit_identical_sd15_shaped():
    weights = sd15_kv_weights()
    snap = snapshot(weights)
    delta = random_delta(weights, 0.01)
    expected = delta.applied_to(snap)
    orig = apply_(weights, delta, BASE)
    changed = 0
    for n, w in weights.items():
        assert torch.equal(w, expected[n])
        changed += int((w != snap[n]).sum())
    assert changed > 0.5 * delta.nnz  # the delta was really added
    restore_(weights, orig)
    assert_bit_identical(weights, snap)


def test_apply_restore_bit_identical_tiny(tiny_base):  # shared model: the test restores it
    weights = tiny_base.target_weights()
    snap = snapshot(weights)
    delta = random_delta(weights, 0.05, base_id=tiny_base.base_id, dtype=torch.float32)
    for _ in range(3):  # repeated swaps never drift
        with swapped(weights, delta, tiny_base.base_id):
            assert any(not torch.equal(weights[n], snap[n]) for n in weights)
    assert_bit_identical(weights, snap)


def test_swapped_restores_on_error():
    weights = {"a": torch.randn(40, 16), "b": torch.randn(8, 16)}
    snap = snapshot(weights)
    with pytest.raises(RuntimeError, match="boom"):
        with swapped(weights, random_delta(weights, 0.1)):
            raise RuntimeError("boom")
    assert_bit_identical(weights, snap)


def _small():
    weights = {"l0": torch.randn(4, 5), "l1": torch.randn(3, 5)}
    delta = SparseDelta(
        BASE,
        {"l0": (4, 5), "l1": (3, 5)},
        {
            "l0": LayerDelta(torch.tensor([0, 3, 19]), torch.tensor([0.5, -1.0, 2.0])),
            "l1": LayerDelta(torch.tensor([2, 7]), torch.tensor([1.0, 1.0], dtype=torch.float16)),
        },
    )
    return weights, delta


def _corrupt(kind: str, d: SparseDelta) -> SparseDelta:
    l0 = d.layers["l0"]
    if kind == "unknown_layer":
        d.shapes["ghost"] = (4, 5)
        d.layers["ghost"] = LayerDelta(torch.tensor([1]), torch.tensor([1.0]))
    elif kind == "entries_without_shape":
        d.layers["ghost"] = LayerDelta(torch.tensor([1]), torch.tensor([1.0]))
    elif kind == "wrong_shape":
        d.shapes["l0"] = (5, 4)
    elif kind == "unsorted":
        d.layers["l0"] = LayerDelta(torch.tensor([3, 0, 19]), l0.value)
    elif kind == "duplicate":
        d.layers["l0"] = LayerDelta(torch.tensor([0, 3, 3]), l0.value)
    elif kind == "out_of_range":
        d.layers["l0"] = LayerDelta(torch.tensor([0, 3, 20]), l0.value)
    elif kind == "negative":
        d.layers["l0"] = LayerDelta(torch.tensor([-1, 3, 19]), l0.value)
    elif kind == "nan":
        d.layers["l0"] = LayerDelta(l0.index, torch.tensor([0.5, float("nan"), 2.0]))
    elif kind == "inf":
        d.layers["l0"] = LayerDelta(l0.index, torch.tensor([0.5, float("-inf"), 2.0]))
    elif kind == "length_mismatch":
        d.layers["l0"] = LayerDelta(l0.index, l0.value[:2])
    elif kind == "int_values":
        d.layers["l0"] = LayerDelta(l0.index, torch.tensor([1, 2, 3]))
    elif kind == "two_d_index":
        d.layers["l0"] = LayerDelta(l0.index.view(1, 3), l0.value)
    else:
        raise AssertionError(kind)
    return d


CORRUPTIONS = [
    ("unknown_layer", "not a target"),
    ("entries_without_shape", "no recorded shape"),
    ("wrong_shape", r"shape \(5, 4\)"),
    ("unsorted", "not sorted"),
    ("duplicate", "duplicate"),
    ("out_of_range", "index 20, layer has 20 entries"),
    ("negative", "index -1"),
    ("nan", "non-finite"),
    ("inf", "non-finite"),
    ("length_mismatch", "3 indices but 2 values"),
    ("int_values", "value dtype"),
    ("two_d_index", "1-D"),
]


@pytest.mark.parametrize("kind,message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_invalid_delta_refused_before_any_write(kind, message):
    weights, delta = _small()
    bad = _corrupt(kind, delta)
    snap = snapshot(weights)
    with pytest.raises(DeltaValidationError, match=message) as ei:
        apply_(weights, bad, BASE)
    assert not isinstance(ei.value, BaseMismatchError)
    assert "nothing was applied" in str(ei.value)
    assert_bit_identical(weights, snap)
    with pytest.raises(DeltaValidationError):
        with swapped(weights, bad, BASE):
            raise AssertionError("must not get here")
    assert_bit_identical(weights, snap)


def test_base_mismatch_refused():
    weights, delta = _small()
    snap = snapshot(weights)
    with pytest.raises(BaseMismatchError, match="another base model"):
        apply_(weights, delta, "ffffffffffffffff")
    assert_bit_identical(weights, snap)


def test_every_problem_reported_at_once():
    weights, delta = _small()
    delta.layers["l0"] = LayerDelta(torch.tensor([3, 0, 99]), torch.tensor([float("nan"), 1.0, 1.0]))
    delta.shapes["ghost"] = (1, 1)
    problems = delta.problems({n: tuple(w.shape) for n, w in weights.items()}, "other")
    assert len(problems) >= 4  # base, unknown layer, out of range, unsorted, non-finite


def test_failure_mid_apply_restores():
    # l0 applies first, then l1's weight cannot be viewed flat (non-contiguous): l0 must be put back
    weights = {"l0": torch.randn(4, 5), "l1": torch.randn(5, 3).t()}  # l1: [3, 5], non-contiguous
    _, delta = _small()
    snap = snapshot(weights)
    with pytest.raises(RuntimeError):
        apply_(weights, delta, BASE)
    assert_bit_identical(weights, snap)


def test_merge_overrides_and_add_sums():
    a = SparseDelta(BASE, {"x": (2, 3)}, {"x": LayerDelta(torch.tensor([0, 2, 4]), torch.tensor([1.0, 2.0, 3.0]))})
    b = SparseDelta(
        BASE,
        {"x": (2, 3), "y": (1, 2)},
        {
            "x": LayerDelta(torch.tensor([2, 5]), torch.tensor([10.0, 20.0])),
            "y": LayerDelta(torch.tensor([1]), torch.tensor([7.0])),
        },
    )
    m = a.merge(b)
    assert m.layers["x"].index.tolist() == [0, 2, 4, 5]
    assert m.layers["x"].value.tolist() == [1.0, 10.0, 3.0, 20.0]
    assert m.layers["y"].value.tolist() == [7.0]
    assert m.shapes == {"x": (2, 3), "y": (1, 2)}
    s = a.add(b)
    assert s.layers["x"].index.tolist() == [0, 2, 4, 5]
    assert s.layers["x"].value.tolist() == [1.0, 12.0, 3.0, 20.0]
    # merge is the state after both: applying it equals applying b over (a applied)
    base = {"x": torch.zeros(2, 3), "y": torch.zeros(1, 2)}
    assert torch.equal(m.applied_to(base)["x"].flatten(), torch.tensor([1.0, 0.0, 10.0, 0.0, 3.0, 20.0]))
    # inputs untouched
    assert a.layers["x"].value.tolist() == [1.0, 2.0, 3.0]
    m.validate({"x": (2, 3), "y": (1, 2)}, BASE)


def test_merge_refuses_other_base_and_shape_conflict():
    a = SparseDelta(BASE, {"x": (2, 3)}, {"x": LayerDelta(torch.tensor([0]), torch.tensor([1.0]))})
    other = SparseDelta("other", {"x": (2, 3)}, {"x": LayerDelta(torch.tensor([0]), torch.tensor([1.0]))})
    with pytest.raises(BaseMismatchError):
        a.merge(other)
    with pytest.raises(BaseMismatchError):
        a.add(other)
    bad = SparseDelta(BASE, {"x": (3, 2)}, {"x": LayerDelta(torch.tensor([0]), torch.tensor([1.0]))})
    with pytest.raises(DeltaValidationError, match="shape"):
        a.merge(bad)


def test_merge_of_random_sd15_deltas_is_valid():
    weights = sd15_kv_weights(device="meta")
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    a, b = random_delta(weights, 0.002, seed=1), random_delta(weights, 0.002, seed=2)
    m = a.merge(b)
    m.validate(shapes, BASE)
    for n in weights:
        expect = torch.unique(torch.cat([a.layers[n].index, b.layers[n].index]))
        assert torch.equal(m.layers[n].index, expect)


def test_without_drops_entries_and_empty_layers():
    d = SparseDelta(
        BASE,
        {"x": (2, 3), "y": (1, 2)},
        {
            "x": LayerDelta(torch.tensor([0, 2, 4]), torch.tensor([1.0, 2.0, 3.0])),
            "y": LayerDelta(torch.tensor([1]), torch.tensor([7.0])),
        },
    )
    w = d.without({"x": torch.tensor([2, 5]), "y": torch.tensor([1])})
    assert list(w.layers) == ["x"] and list(w.shapes) == ["x"]
    assert w.layers["x"].index.tolist() == [0, 4]
    assert w.layers["x"].value.tolist() == [1.0, 3.0]
    assert d.without({}).nnz == d.nnz == 4
    w.validate({"x": (2, 3), "y": (1, 2)}, BASE)


def test_from_weights_and_stats():
    base = {"x": torch.zeros(2, 3)}
    new = {"x": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -2.0]])}
    masks = {"x": torch.tensor([[False, True, False], [True, False, True]])}
    d = SparseDelta.from_weights(base, new, masks, BASE)
    assert d.layers["x"].index.tolist() == [1, 3, 5]
    assert d.layers["x"].value.tolist() == [1.0, 0.0, -2.0]
    assert d.nnz == 3 and d.density(6) == 0.5
    st = d.stats()["x"]
    assert st["nnz"] == 3 and st["density"] == 0.5 and st["mean_abs"] == pytest.approx(1.0)
    assert torch.equal(d.applied_to(base)["x"], new["x"])
    empty = SparseDelta.from_weights(base, new, {"x": torch.zeros(2, 3, dtype=torch.bool)}, BASE)
    assert empty.nnz == 0 and empty.layers == {}


def test_the_swap_names_stay_importable_from_delta():
    """Benchmarks and older callers import the swap from cns_ray.delta: the same functions as cns_ray.layers'."""
    from cns_ray import delta, layers

    assert delta.apply_ is layers.apply_ and delta.restore_ is layers.restore_ and delta.swapped is layers.swapped
    with pytest.raises(AttributeError):
        delta.no_such_name
