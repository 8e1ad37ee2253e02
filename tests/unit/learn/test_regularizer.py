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


def test_kv_preservation_is_the_mean_kv_change_on_the_preserved_rows():
    from cns_ray.learn.regularizer import kv_preservation, text_gram

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=gen)  # [P, T, D]: 15 preserved text rows
    shapes = {"k": (2, 4), "v": (3, 4)}
    idx = {"k": torch.tensor([1, 6]), "v": torch.tensor([0, 5, 11])}
    start = {"k": torch.tensor([0.5, -1.0]), "v": torch.tensor([0.0, 2.0, 1.0])}
    values = {n: (s + torch.randn(s.shape, generator=gen)).requires_grad_(True) for n, s in start.items()}
    got = kv_preservation(values, start, idx, shapes, text_gram(hidden))
    rows = hidden.reshape(-1, 4)  # [M, D]
    want = 0.0
    for n, (o, i) in shapes.items():
        dw = torch.zeros(o * i).index_put((idx[n],), values[n].detach() - start[n]).view(o, i)
        want += float((rows @ dw.T).pow(2).sum()) / rows.shape[0]  # ||dW C^T||^2 / M
    assert abs(float(got.detach()) - want / 5) < 1e-5  # / (2 + 3) output rows
    got.backward()
    assert values["k"].grad.abs().sum() > 0
    unchanged = {n: s.clone() for n, s in start.items()}
    assert float(kv_preservation(unchanged, start, idx, shapes, text_gram(hidden))) == 0.0


def test_kv_preservation_is_blind_to_directions_the_rows_do_not_use():
    """A change along an input direction no preserved row has costs nothing: the new concept may use it."""
    from cns_ray.learn.regularizer import kv_preservation, text_gram

    hidden = torch.zeros(1, 2, 3)
    hidden[0, :, :2] = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # rows span input features 0 and 1, not 2
    shapes = {"k": (1, 3)}
    start = {"k": torch.zeros(2)}
    free = kv_preservation({"k": torch.tensor([0.0, 5.0])}, start, {"k": torch.tensor([0, 2])}, shapes, text_gram(hidden))
    used = kv_preservation({"k": torch.tensor([1.0, 0.0])}, start, {"k": torch.tensor([1, 2])}, shapes, text_gram(hidden))
    assert float(free) == 0.0 and abs(float(used) - 2.0) < 1e-6  # (1 * 2)^2 / 2 rows
