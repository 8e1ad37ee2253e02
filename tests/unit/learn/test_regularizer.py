import torch

from cns_ray.learn.regularizer import l_reg, overlap_mask, reg_targets


def test_targets_previous_on_overlap_pretrained_elsewhere():
    prev = torch.tensor([1.0, 2.0, 3.0, 4.0])
    pre = torch.tensor([10.0, 20.0, 30.0, 40.0])
    ov = overlap_mask(torch.tensor([3, 5, 8, 13]), torch.tensor([1, 5, 13, 99]))
    assert ov.tolist() == [False, True, False, True]
    assert reg_targets(prev, pre, ov).tolist() == [10.0, 2.0, 30.0, 4.0]
    assert not overlap_mask(torch.tensor([1, 2]), None).any()


def test_l_reg_is_mean_square_over_all_layers_and_grad_pulls_to_target():
    v = {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor([0.0, 0.0, 3.0], requires_grad=True)}
    t = {"a": torch.tensor([0.0, 2.0]), "b": torch.tensor([1.0, 0.0, 0.0])}
    loss = l_reg(v, t)
    assert torch.isclose(loss, torch.tensor((1 + 0 + 1 + 0 + 9) / 5))
    loss.backward()
    assert torch.allclose(v["a"].grad, 2 * (v["a"].detach() - t["a"]) / 5)
    assert torch.allclose(v["b"].grad, 2 * (v["b"].detach() - t["b"]) / 5)


def test_l_reg_empty_and_mismatch():
    assert float(l_reg({}, {})) == 0.0
    try:
        l_reg({"a": torch.zeros(2)}, {"b": torch.zeros(2)})
    except ValueError as e:
        assert "'a'" in str(e) and "'b'" in str(e)
    else:
        raise AssertionError("mismatched layers must raise")
