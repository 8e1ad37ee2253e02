"""Cones math: scores, the selection rule, union, the served shut delta and its precedence over a CNS delta."""

import torch

from cns_ray import cones
from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.layers import swapped


def test_selection_keeps_highest_positive_weight_times_grad():
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    g = torch.tensor([[2.0, -1.0, -1.0], [1.0, 0.25, 3.0]])
    # w*g = [[2, 2, -3], [0.5, 1, -3]]: positives at 0, 1 (tie), 3, 4
    s = cones.weight_grad_score(w, g)
    assert cones.select_layer(s, 2 / 6).tolist() == [0, 1]  # tie 2 == 2 kept both; budget 2
    assert cones.select_layer(s, 3 / 6).tolist() == [0, 1, 4]
    # never a non-positive score, whatever the budget
    assert cones.select_layer(s, 1.0).tolist() == [0, 1, 3, 4]


def test_ties_broken_by_lower_index_deterministically():
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert cones.select_layer(s, 0.5).tolist() == [0, 1]


def test_accumulate_over_steps_changes_selection():
    w = {"a": torch.tensor([[1.0, 1.0]])}
    acc: dict = {}
    cones.accumulate_scores(acc, w, {"a": torch.tensor([[1.0, 0.5]])})
    cones.accumulate_scores(acc, w, {"a": torch.tensor([[-2.0, 0.5]])})
    assert torch.equal(acc["a"], torch.tensor([[-1.0, 1.0]]))
    assert cones.select_neurons(acc, 1.0)["a"].tolist() == [1]  # entry 0 turned negative over the two steps


def test_no_positive_score_selects_nothing_and_layer_is_left_out():
    assert cones.select_neurons({"a": -torch.ones(2, 2)}, 0.5) == {}


def test_union_sorted_unique():
    u = cones.union([{"a": torch.tensor([5, 1, 9])}, {"a": torch.tensor([9, 2]), "b": torch.tensor([3])}])
    assert u["a"].tolist() == [1, 2, 5, 9] and u["b"].tolist() == [3]


def test_shut_delta_zeroes_exactly_those_and_restores_bit_exact():
    torch.manual_seed(0)
    w = {"a": torch.randn(4, 6, dtype=torch.float16)}
    orig = w["a"].clone()
    idx = {"a": torch.tensor([0, 7, 23])}
    d = cones.shut_delta(w, idx, "b0")
    with swapped(w, d, "b0"):
        flat = w["a"].view(-1)
        assert bool((flat[idx["a"]] == 0).all())
        keep = torch.ones(24, dtype=torch.bool)
        keep[idx["a"]] = False
        assert torch.equal(flat[keep], orig.view(-1)[keep])
    assert torch.equal(w["a"].view(torch.int16), orig.view(torch.int16))


def test_shut_wins_over_cns_delta_on_shared_entries():
    w = {"a": torch.arange(1.0, 7.0).view(2, 3)}
    cns = SparseDelta("b0", {"a": (2, 3)}, {"a": LayerDelta(torch.tensor([1, 4]), torch.tensor([10.0, 20.0]))})
    d = cones.with_shut(cns, w, {"a": torch.tensor([1, 5])})
    with swapped(w, d, "b0"):
        got = w["a"].view(-1).tolist()
    # index 1: CNS said +10, shut wins -> 0; index 4: CNS kept (5 + 20); index 5: shut -> 0
    assert got == [1.0, 0.0, 3.0, 4.0, 25.0, 0.0]
    assert w["a"].view(-1).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
