"""Calibration without Ray: sharding, the store cache, concept selection through the cache."""

from __future__ import annotations

import pytest
import torch

from cns_ray.config import SelectionConfig, StoreConfig
from cns_ray.errors import ConfigError
from cns_ray.jobs.calibrate import Scorer, general_masks, general_masks_info, select_for_concept, shard_prompts
from cns_ray.neurons import and_reduce, unpack_masks
from cns_ray.select import general_masks_local, load_prompts
from cns_ray.store import ConceptStore


@pytest.mark.parametrize("n,k,sizes", [(20, 2, [10, 10]), (7, 3, [3, 2, 2]), (2, 5, [1, 1]), (5, 1, [5])])
def test_shard_prompts(n, k, sizes):
    prompts = [f"p{i}" for i in range(n)]
    shards = shard_prompts(prompts, k)
    assert [len(s) for s in shards] == sizes
    assert [p for s in shards for p in s] == prompts


def test_scorer_shards_equal_local(tiny_base):
    prompts = load_prompts()
    cfg = SelectionConfig(select_ratio=0.3, prompt_chunk=4)
    scorer = Scorer("tiny", device="cpu")
    assert scorer.base_id == tiny_base.base_id
    parts = [unpack_masks(scorer.score(s, cfg.select_ratio, cfg.prompt_chunk)) for s in shard_prompts(prompts, 3)]
    assert scorer.info()["calls"] == 3
    ref = general_masks_local(tiny_base, prompts, cfg)
    sharded = and_reduce(parts)
    assert all(torch.equal(ref[n], sharded[n]) for n in ref)


def test_cache_second_call_does_no_scoring(tiny_base, tmp_path):
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    cfg = SelectionConfig(select_ratio=0.3)
    calls = []
    first = general_masks_info(tiny_base, store, cfg, progress=lambda d, t: calls.append((d, t)))
    assert not first.from_cache and first.shards == 1 and calls == [(1, 1)]
    second = general_masks_info(tiny_base, store, cfg, progress=lambda d, t: calls.append((d, t)))
    assert second.from_cache and second.shards == 0 and calls == [(1, 1)]
    assert second.key == first.key
    assert all(torch.equal(first.masks[n], second.masks[n]) for n in first.masks)
    # another ratio is another key: scored again
    third = general_masks_info(tiny_base, store, SelectionConfig(select_ratio=0.2))
    assert not third.from_cache and third.key != first.key
    # the same store from a new object (another process would see the same)
    again = general_masks(tiny_base, ConceptStore(StoreConfig(uri=str(tmp_path / "store"))), cfg)
    assert all(torch.equal(first.masks[n], again[n]) for n in again)


def test_select_for_concept_uses_cached_general(tiny_base, tmp_path):
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    cfg = SelectionConfig(select_ratio=0.3)
    sel = select_for_concept(tiny_base, store, ["a photo of a dog", "a dog on the beach"], cfg)
    gen = general_masks_info(tiny_base, store, cfg)
    assert gen.from_cache
    for n in sel.concept:
        assert torch.equal(sel.general[n], gen.masks[n])
        assert torch.equal(sel.concept[n], sel.base[n] & ~gen.masks[n])
    assert sel.summary()["concept_count"] > 0


def test_negative_actor_count_refused(tiny_base):
    with pytest.raises(ConfigError, match="num_actors=-1"):
        general_masks_info(tiny_base, None, SelectionConfig(), num_actors=-1)
