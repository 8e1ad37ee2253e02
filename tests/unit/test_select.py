"""Selection on a real (tiny) base model: prompts, cache keys, general/base/concept masks."""

from __future__ import annotations

import pytest
import torch

from cns_ray import neurons
from cns_ray.config import SelectionConfig
from cns_ray.errors import InputError
from cns_ray.select import base_masks, calib_key, general_masks_local, load_prompts, select_concept

@pytest.fixture(scope="module")
def general03(tiny_base):
    return general_masks_local(tiny_base, load_prompts(), SelectionConfig(select_ratio=0.3))


CAPTIONS = ["a photo of a dog", "a photo of a dog on the beach", "a small brown dog sitting on a sofa"]


def test_builtin_prompts():
    prompts = load_prompts()
    assert len(prompts) == 20 and len(set(prompts)) == 20


def test_prompt_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# my prompts\n\na cat\n  a dog  \n")
    assert load_prompts(f) == ["a cat", "a dog"]
    f.write_text("only one\n")
    with pytest.raises(InputError, match="at least 2"):
        load_prompts(f)
    with pytest.raises(InputError, match="does not exist"):
        load_prompts(tmp_path / "missing.txt")


def test_a_base_model_folder_ships_its_own_calibration_prompts(tmp_path):
    from types import SimpleNamespace

    from cns_ray.data import data_path
    from cns_ray.eval.harness import calibration_prompts

    (tmp_path / "calibration_prompts.txt").write_text("# domain prompts\na red circle\na blue square\n")
    own = SimpleNamespace(folder=tmp_path)
    assert load_prompts(base=own) == ["a red circle", "a blue square"]
    assert load_prompts(base=SimpleNamespace(folder=tmp_path / "none")) == load_prompts()  # no file: built-in
    assert load_prompts(base=SimpleNamespace(folder=None)) == load_prompts()
    other = tmp_path / "p.txt"
    other.write_text("x one\ny two\n")
    assert load_prompts(other, base=own) == ["x one", "y two"]  # an explicit file wins
    # the shipped toy-world model's prompts are its world's captions (v2: the ones train_base writes)
    from world_base import default_base_world

    shipped = load_prompts(base=SimpleNamespace(folder=data_path("base", "tiny-world")))
    assert len(shipped) == 20 and shipped != load_prompts()
    if default_base_world() >= 2:
        assert shipped == calibration_prompts()


def test_calib_key_depends_on_base_prompts_and_ratio():
    p = ["a", "b"]
    k = calib_key("base1", p, SelectionConfig(select_ratio=0.1))
    assert k == calib_key("base1", list(p), SelectionConfig(select_ratio=0.1, prompt_chunk=3))  # chunk is not part
    assert k != calib_key("base2", p, SelectionConfig(select_ratio=0.1))
    assert k != calib_key("base1", ["a", "c"], SelectionConfig(select_ratio=0.1))
    assert k != calib_key("base1", p, SelectionConfig(select_ratio=0.2))


def test_general_masks_local_and_monotone(tiny_base):
    prompts = load_prompts()
    shapes = tiny_base.target_shapes()
    fracs = []
    for ratio in (0.1, 0.3, 0.6):
        g = general_masks_local(tiny_base, prompts, SelectionConfig(select_ratio=ratio))
        assert {n: tuple(m.shape) for n, m in g.items()} == shapes
        assert all(m.dtype == torch.bool for m in g.values())
        fracs.append(neurons.mask_fraction(g))
    assert fracs == sorted(fracs) and fracs[0] < fracs[-1]
    assert fracs[0] <= 0.1 + 1e-9  # AND over prompts never exceeds one prompt's share


def test_general_is_and_of_prompt_shards(tiny_base, general03):
    prompts = load_prompts()
    cfg = SelectionConfig(select_ratio=0.3, prompt_chunk=3)
    whole = general_masks_local(tiny_base, prompts, cfg)  # chunk 3 here, 8 in general03: same masks
    assert all(torch.equal(whole[n], general03[n]) for n in whole)
    shards = [general_masks_local(tiny_base, prompts[i::3], cfg) for i in range(3)]
    reduced = neurons.and_reduce(shards)
    assert all(torch.equal(whole[n], reduced[n]) for n in whole)


def test_select_concept(tiny_base, general03):
    cfg = SelectionConfig(select_ratio=0.3)
    general = general03
    sel = select_concept(tiny_base, CAPTIONS, general, cfg)
    assert all(torch.equal(sel.base[n], base_masks(tiny_base, CAPTIONS, cfg)[n]) for n in sel.base)
    for n in sel.concept:
        assert torch.equal(sel.concept[n], sel.base[n] & ~general[n])
    s = sel.summary()
    assert 0 < s["concept_fraction"] <= s["base_fraction"] <= 0.3 + 1e-9
    assert s["concept_count"] == sum(int(m.sum()) for m in sel.concept.values())


def test_select_concept_budget(tiny_base, general03):
    cfg = SelectionConfig(select_ratio=0.3)
    general = general03
    free = select_concept(tiny_base, CAPTIONS, general, cfg)
    capped = select_concept(tiny_base, CAPTIONS, general, SelectionConfig(select_ratio=0.3, budget=0.001))
    total = sum(m.numel() for m in general.values())
    n_capped = sum(int(m.sum()) for m in capped.concept.values())
    assert n_capped == min(int(0.001 * total), int(free.summary()["concept_count"]))
    for n in capped.concept:
        assert bool((capped.concept[n] & ~free.concept[n]).sum() == 0)


def test_select_concept_without_captions(tiny_base):
    cfg = SelectionConfig()
    with pytest.raises(InputError, match="no captions"):
        select_concept(tiny_base, [], {}, cfg)
