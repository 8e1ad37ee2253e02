"""Scores and masks (cns_ray.neurons) on small hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cns_ray import neurons


def test_feature_norms_exclude_padding_tokens():
    # one prompt, 3 tokens, 2 features; the third token is padding with huge values that must not count
    hidden = torch.tensor([[[3.0, 0.0], [4.0, 1.0], [100.0, 100.0]]])  # [P=1, T=3, D=2]
    mask = torch.tensor([[1, 1, 0]])  # [P, T]
    n = neurons.feature_norms(hidden, mask)  # [1, 2]
    assert torch.allclose(n, torch.tensor([[5.0, 1.0]]))


def test_feature_norms_per_prompt_and_shape_check():
    hidden = torch.tensor([[[1.0, 2.0], [2.0, 2.0]], [[0.0, 3.0], [9.0, 9.0]]])  # [2, 2, 2]
    mask = torch.tensor([[1, 1], [1, 0]])
    n = neurons.feature_norms(hidden, mask)
    assert torch.allclose(n, torch.tensor([[5.0**0.5, 8.0**0.5], [0.0, 3.0]]))
    with pytest.raises(ValueError, match="must be"):
        neurons.feature_norms(hidden, torch.ones(2, 3))


def test_neuron_scores_hand_computed():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])  # [out=2, in=2]
    n = torch.tensor([2.0, 1.0])  # [in]
    assert torch.equal(neurons.neuron_scores(w, n), torch.tensor([[2.0, 2.0], [6.0, 0.5]]))
    # batched over prompts: [P, in] -> [P, out, in]
    s = neurons.neuron_scores(w, torch.tensor([[2.0, 1.0], [0.0, 1.0]]))
    assert s.shape == (2, 2, 2)
    assert torch.equal(s[1], torch.tensor([[0.0, 2.0], [0.0, 0.5]]))


@pytest.mark.parametrize("in_features,ratio,k", [(10, 0.1, 1), (10, 0.15, 2), (10, 0.01, 1), (10, 1.0, 10), (768, 0.1, 77)])
def test_row_k(in_features, ratio, k):
    assert neurons.row_k(in_features, ratio) == k


def test_row_topk_mask_is_per_row():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0], [9.0, 0.0, 1.0, 8.0]])  # [2, 4]
    m = neurons.row_topk_mask(scores, 0.5)
    assert torch.equal(m, torch.tensor([[False, True, True, False], [True, False, False, True]]))
    assert m.sum(dim=1).tolist() == [2, 2]  # the same count in every row, not a global top-k


def test_and_select_is_and_over_prompts():
    w = torch.tensor([[1.0, 1.0, 1.0]])  # [1, 3]
    norms = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])  # prompt 0 picks {0,1}, prompt 1 picks {1,2}
    m = neurons.and_select(w, norms, ratio=0.6, chunk=1)
    assert m.tolist() == [[False, True, False]]
    # chunking does not change the result
    assert torch.equal(m, neurons.and_select(w, norms, ratio=0.6, chunk=8))
    with pytest.raises(ValueError, match=r"\[P, 3\]"):
        neurons.and_select(w, torch.ones(2, 4), 0.5)


def _random_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = {"a": torch.randn(16, 24, generator=g), "b": torch.randn(8, 24, generator=g)}
    norms = torch.rand(6, 24, generator=g) + 0.1  # [P, in]
    return weights, norms


def test_general_fraction_monotone_in_select_ratio():
    weights, norms = _random_case()
    prev_masks, prev_frac = None, -1.0
    for ratio in (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0):
        masks = neurons.select_masks(weights, norms, ratio)
        frac = neurons.mask_fraction(masks)
        assert frac >= prev_frac, f"fraction fell from {prev_frac} to {frac} at ratio {ratio}"
        if prev_masks is not None:  # larger ratio selects a superset
            for n in masks:
                assert bool((prev_masks[n] & ~masks[n]).sum() == 0)
        prev_masks, prev_frac = masks, frac
    assert prev_frac == 1.0  # ratio 1 keeps everything
    assert neurons.mask_fraction(neurons.select_masks(weights, norms, 0.05)) < 0.1


def test_and_over_more_prompts_never_grows():
    weights, norms = _random_case(1)
    few = neurons.select_masks(weights, norms[:2], 0.3)
    many = neurons.select_masks(weights, norms, 0.3)
    for n in few:
        assert bool((many[n] & ~few[n]).sum() == 0)


def test_concept_is_base_and_not_general_exactly():
    g = torch.Generator().manual_seed(2)
    base = {"x": torch.rand(7, 9, generator=g) > 0.4, "y": torch.rand(3, 5, generator=g) > 0.5}
    general = {"x": torch.rand(7, 9, generator=g) > 0.5, "y": torch.rand(3, 5, generator=g) > 0.5}
    concept = neurons.concept_masks(base, general)
    for n in base:
        for b, gen, c in zip(base[n].flatten().tolist(), general[n].flatten().tolist(), concept[n].flatten().tolist()):
            assert c == (b and not gen)
    with pytest.raises(ValueError, match="different layers"):
        neurons.concept_masks(base, {"x": general["x"]})


def test_and_reduce_matches_elementwise_and_and_keeps_inputs():
    g = torch.Generator().manual_seed(3)
    parts = [{"a": torch.rand(4, 6, generator=g) > 0.3, "b": torch.rand(2, 6, generator=g) > 0.3} for _ in range(3)]
    before = [{n: m.clone() for n, m in p.items()} for p in parts]
    out = neurons.and_reduce(parts)
    for n in ("a", "b"):
        assert torch.equal(out[n], parts[0][n] & parts[1][n] & parts[2][n])
    for p, b in zip(parts, before):
        assert all(torch.equal(p[n], b[n]) for n in p)
    with pytest.raises(ValueError):
        neurons.and_reduce([])
    with pytest.raises(ValueError, match="different layers"):
        neurons.and_reduce([parts[0], {"a": parts[1]["a"]}])


def test_cap_to_budget_keeps_highest_scores_within_limit():
    masks = {"a": torch.tensor([[True, True, False, True]]), "b": torch.tensor([[True, False, True, True]])}
    scores = {"a": torch.tensor([[5.0, 1.0, 99.0, 3.0]]), "b": torch.tensor([[4.0, 98.0, 2.0, 6.0]])}
    # 8 weights, budget 0.375 -> limit 3 of the 6 selected; 99 and 98 are not selected and must not count
    capped = neurons.cap_to_budget(masks, scores, 0.375)
    assert capped["a"].tolist() == [[True, False, False, False]]  # 5
    assert capped["b"].tolist() == [[True, False, False, True]]  # 4, 6
    for n in masks:
        assert bool((capped[n] & ~masks[n]).sum() == 0)


@pytest.mark.parametrize("budget", [0.001, 0.01, 0.05, 0.2, 1.0])
def test_cap_to_budget_respects_the_limit(budget):
    weights, norms = _random_case(4)
    masks = neurons.select_masks(weights, norms[:1], 0.5)
    scores = neurons.mean_scores(weights, norms[:1])
    capped = neurons.cap_to_budget(masks, scores, budget)
    total = sum(m.numel() for m in masks.values())
    selected = sum(int(m.sum()) for m in masks.values())
    kept = sum(int(m.sum()) for m in capped.values())
    assert kept == min(selected, int(budget * total))
    # every kept score >= every dropped (selected) score
    kept_s = torch.cat([scores[n][capped[n]] for n in masks])
    dropped_s = torch.cat([scores[n][masks[n] & ~capped[n]] for n in masks])
    if kept_s.numel() and dropped_s.numel():
        assert float(kept_s.min()) >= float(dropped_s.max())


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 8), (7, 33)])
def test_pack_roundtrip(shape):
    g = torch.Generator().manual_seed(shape[0] * 100 + shape[1])
    m = torch.rand(shape, generator=g) > 0.5
    packed = neurons.pack_mask(m)
    assert packed.dtype == np.uint8 and packed.size == (shape[0] * shape[1] + 7) // 8
    assert torch.equal(neurons.unpack_mask(packed, shape), m)
    many = {"a": m, "b": ~m}
    back = neurons.unpack_masks(neurons.pack_masks(many))
    assert all(torch.equal(back[n], many[n]) for n in many)


def test_unpack_wrong_size_refused():
    packed = neurons.pack_mask(torch.ones(4, 4, dtype=torch.bool))  # 2 bytes
    with pytest.raises(ValueError, match="needs"):
        neurons.unpack_mask(packed, (5, 5))  # needs 4 bytes
    with pytest.raises(ValueError, match="needs"):
        neurons.unpack_mask(packed, (1, 4))  # needs 1 byte


def test_indices_roundtrip_sorted():
    m = torch.tensor([[False, True, False], [True, False, True]])
    idx = neurons.mask_to_indices(m)
    assert idx.tolist() == [1, 3, 5] and idx.dtype == torch.int64
    assert torch.equal(neurons.indices_to_mask(idx, (2, 3)), m)


def test_layer_fractions():
    masks = {"a": torch.tensor([[True, False], [False, False]]), "b": torch.ones(2, 2, dtype=torch.bool)}
    assert neurons.layer_fractions(masks) == {"a": 0.25, "b": 1.0}
    assert neurons.mask_fraction(masks) == 5 / 8


def test_exclusive_refill_drops_held_entries_and_refills_by_score():
    concept = {"a": torch.tensor([[True, True, False, False, False, False]]), "b": torch.tensor([[True, False]])}
    general = {"a": torch.tensor([[False, False, False, False, True, False]]), "b": torch.tensor([[False, False]])}
    held = {"a": torch.tensor([[True, False, False, False, False, False]])}  # no entry of "b" held
    scores = {"a": torch.tensor([[9.0, 8.0, 1.0, 3.0, 99.0, 2.0]]), "b": torch.tensor([[1.0, 5.0]])}
    out = neurons.exclusive_refill(concept, general, held, scores)
    # entry 0 is held -> dropped; refilled with the best free entry: 3 (99 at 4 is general, 8 at 1 is kept already)
    assert out["a"].tolist() == [[False, True, False, True, False, False]]
    assert torch.equal(out["b"], concept["b"])
    for n in out:
        assert int(out[n].sum()) == int(concept[n].sum())  # the count is kept
        assert not bool((out[n] & general[n]).any())
        assert not bool((out[n] & held.get(n, torch.zeros_like(out[n]))).any())


def test_exclusive_refill_keeps_fewer_when_free_entries_run_out():
    concept = {"a": torch.tensor([[True, True, True]])}
    out = neurons.exclusive_refill(concept, {"a": torch.tensor([[False, False, False]])},
                                   {"a": torch.tensor([[True, True, False]])}, {"a": torch.ones(1, 3)})
    assert out["a"].tolist() == [[False, False, True]]
