"""Baseline hooks: explicit masks train exactly those entries; random masks match CNS's count; fusion sums."""

import pytest
import torch

from cns_ray.config import StoreConfig
from cns_ray.eval.config import EvalConfig
from cns_ray.eval.methods import fused, learn_one, random_masks
from cns_ray.models import load_base_model
from cns_ray.store import ConceptStore
from cns_ray.world import concepts as wc


@pytest.fixture(scope="module")
def base():
    return load_base_model("tiny")


def test_random_masks_keep_the_per_layer_count():
    like = {"a": torch.rand(8, 16) < 0.2, "b": torch.rand(4, 4) < 0.5}
    r = random_masks(like, seed=1)
    assert {n: int(m.sum()) for n, m in r.items()} == {n: int(m.sum()) for n, m in like.items()}
    assert any(not torch.equal(r[n], like[n]) for n in like)
    assert all(torch.equal(r[n], random_masks(like, seed=1)[n]) for n in like)


@pytest.mark.parametrize("method", ["naive", "random", "cns", "token"])
def test_methods_train_their_entries_and_fusion_sums(base, tmp_path, method):
    from cns_ray.config import SelectionConfig
    from cns_ray.eval.harness import calibration_prompts
    from cns_ray.select import general_masks_local

    cfg = EvalConfig(steps=2, n_ref=4)
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    general = general_masks_local(base, calibration_prompts(), SelectionConfig(select_ratio=cfg.select_ratio))
    states = []
    for name in ("rex", "mia"):
        c = wc.get_concept(name)
        folder = wc.write_reference_folder(c, tmp_path / name, n=4)
        info = learn_one(base, store, cfg, "fusion" if method == "cns" else method, "seq1", c, str(folder), general)
        states.append(store.load(info["tenant"], info["version"], shapes=base.target_shapes(), base_id=base.base_id))
        total = sum(t.shape[0] * t.shape[1] for t in base.targets().values())
        if method == "naive":
            assert info["nnz_new"] == total
        elif method == "token":  # textual-inversion-style: no weight changes, only the token
            assert info["nnz_new"] == 0 and states[-1].delta.nnz == 0 and set(states[-1].tokens) >= {c.token}
        else:
            assert 0 < info["nnz_new"] < total
    if method == "cns":  # learned independently (fusion tenants): the sum holds both tokens and both deltas
        delta, tokens = fused(states)
        assert set(tokens) == {"<rex>", "<mia>"}
        assert delta.nnz >= max(s.delta.nnz for s in states)


def test_each_method_gets_its_learning_rate_and_reg():
    from cns_ray.errors import ConfigError
    from cns_ray.eval.methods import learner_config

    cfg = EvalConfig(weight_lr=2e-2, naive_weight_lr=2e-3, reg_lambda=0.5)
    got = {m: (learner_config(cfg, m).weight_lr, learner_config(cfg, m).reg_lambda)
           for m in ("cns", "naive", "random", "cns_noreg", "fusion", "token")}
    assert got == {"cns": (2e-2, 0.5), "naive": (2e-3, 0.0), "random": (2e-2, 0.5), "cns_noreg": (2e-2, 0.0),
                   "fusion": (2e-2, 0.5), "token": (2e-2, 0.0)}
    assert learner_config(cfg, "cns", seed=7).seed == 7 and learner_config(cfg, "cns").seed == cfg.seed
    kv = learner_config(cfg, "cns_kv")
    assert (kv.reg_lambda, kv.preserve_lambda, kv.weight_lr) == (0.01, 3.0, 2e-2)
    import json

    from cns_ray.data import data_path

    shipped = json.loads(data_path("base", "tiny-world", "cns_defaults.json").read_text())
    assert (kv.reg_lambda, kv.preserve_lambda) == (shipped["reg_lambda"], shipped["preserve_lambda"])  # what cns learn uses
    assert all(learner_config(cfg, m).preserve_lambda == 0.0 for m in ("cns", "naive", "random", "cns_noreg", "fusion"))
    with pytest.raises(ConfigError, match="naive_weight_lr=-1"):
        EvalConfig(naive_weight_lr=-1)
    from cns_ray.config import LearnerConfig

    with pytest.raises(ConfigError, match="preserve_lambda=-1"):
        LearnerConfig(preserve_lambda=-1)


def test_unit_keys_change_with_what_changes_a_unit_and_only_that(monkeypatch):
    from cns_ray.eval import methods
    from cns_ray.eval.run import unit_key

    cfg = EvalConfig()
    key = unit_key(cfg, ("cns_kv", "seq1", 0), "b1")
    assert key.startswith("cns_kv_seq1_0-") and key.endswith(".json")
    assert unit_key(EvalConfig(out_dir="elsewhere", train_seeds=(0, 5)), ("cns_kv", "seq1", 0), "b1") == key
    assert unit_key(cfg, ("cns_kv", "seq1", 0), "b2") != key  # another base
    assert unit_key(EvalConfig(steps=7), ("cns_kv", "seq1", 0), "b1") != key
    cns = unit_key(cfg, ("cns", "seq1", 0), "b1")
    monkeypatch.setattr(methods, "KV_PRESERVE", {"reg_lambda": 0.01, "preserve_lambda": 1.0})
    assert unit_key(cfg, ("cns_kv", "seq1", 0), "b1") != key  # a finished cns_kv unit of another setting is not reused
    assert unit_key(cfg, ("cns", "seq1", 0), "b1") == cns  # ... and the other methods' units stay valid


def test_pair_orders_both_adds_each_pair_with_the_later_concept_first_and_bad_values_are_refused():
    from cns_ray.errors import ConfigError
    from cns_ray.eval.harness import sequence_pairs
    from cns_ray.world.scene import parse_caption

    seq = sequence_pairs(EvalConfig(), "seq1")
    both = sequence_pairs(EvalConfig(pair_orders="both"), "seq1")
    assert both[: len(seq)] == seq and len(both) == 2 * len(seq)
    order = wc.SEQUENCES["seq1"]
    for (_, a, b, bg), (prompt, b2, a2, bg2) in zip(seq, both[len(seq):]):
        assert order.index(a) < order.index(b) and (a2, b2, bg2) == (a, b, bg)  # the same pair, the later one first
        subjects = [o["subject"] for o in parse_caption(prompt)["objects"]]
        assert subjects == [wc.get_concept(b).token, wc.get_concept(a).token]
    assert unit_key_differs(EvalConfig(pairs=6), EvalConfig())
    with pytest.raises(ConfigError, match=r"pairs=30 must be in \[0, 24\]"):
        EvalConfig(pairs=30)
    with pytest.raises(ConfigError, match=r"pair_orders='reverse' must be 'sequence' or 'both'"):
        EvalConfig(pair_orders="reverse")


def unit_key_differs(a: EvalConfig, b: EvalConfig) -> bool:
    from cns_ray.eval.run import unit_key

    return unit_key(a, ("cns_kv", "seq1", 0), "b1") != unit_key(b, ("cns_kv", "seq1", 0), "b1")
