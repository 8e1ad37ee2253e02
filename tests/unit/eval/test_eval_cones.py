"""Cones rows of `cns eval`: one (cones, sequence) unit learns index-only concepts, serves them shut (one concept;
two concepts concatenated in one prompt), and reports bytes per concept from the store's own encoder."""

import numpy as np
import pytest
import torch

from cns_ray.eval.config import METHODS, EvalConfig
from cns_ray.eval.generate import generate
from cns_ray.eval.harness import run_unit
from cns_ray.eval.methods import learner_config, shut_sets
from cns_ray.eval.report import summarize, unit_aggregates
from cns_ray.world import concepts as wc


class _Scorer:
    """Counts what it is asked to score (the real scorers are tested in their own modules)."""

    def single(self, images, c):
        return {"clip": float(images.mean()) / 255.0}

    def pair(self, images, left, right):
        return {"clip": float(images.mean()) / 255.0}

    def general(self, images, scene, prompt):
        return {"clip_text": float(images.mean()) / 255.0}


def test_cones_is_an_eval_method_with_its_own_steps_and_ratio():
    assert "cones" in METHODS and "cns" in METHODS and "token" in METHODS
    lc = learner_config(EvalConfig(cones_steps=7, cones_ratio=0.05, steps=300), "cones", seed=3)
    assert (lc.method, lc.steps, lc.cones_ratio, lc.seed) == ("cones", 7, 0.05, 3)
    from cns_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="cones_ratio=0"):
        EvalConfig(cones_ratio=0.0)


def test_cones_unit_shuts_single_and_concatenated_and_counts_index_bytes(tiny_base, tmp_path):
    base = tiny_base
    cfg = EvalConfig(sequences=("seq1",), concepts_per_sequence=2, methods=("cones",), cones_steps=2,
                     cones_ratio=0.02, n_ref=4, n_gen=1, prompts_per_concept=1, gen_steps=2, general_prompts=1,
                     batch_size=2)
    u = run_unit(base, _Scorer(), cfg, "cones", "seq1", 0, workdir=str(tmp_path))
    assert u["concepts"] == ["rex", "mia"] and set(u["pairs"]) == {"rex+mia"}
    # indices only: ~1-2 bytes per index plus a fixed ~1 KB; far below a CNS delta with fp16 values and a token
    nnz = 2 * sum(int(np.ceil(0.02 * o * i)) for o, i in base.target_shapes().values())
    assert 0 < u["bytes_per_concept"] < 1200 + 2.5 * nnz / 2, u["bytes_per_concept"]
    refs = {"concepts": {n: {"floor": {"clip": 0.0}} for n in u["concepts"]}, "general": {"clip_text": 1.0}}
    agg = unit_aggregates(u, refs, "clip")
    assert np.isfinite(agg["pair"]) and agg["bytes"] == u["bytes_per_concept"]
    assert "cones" in summarize(refs, [u], "clip")

    # what the unit generated: a prompt naming the concepts shuts their (union of) neurons; the general prompts,
    # which name none, are drawn by the untouched base
    from cns_ray.config import StoreConfig
    from cns_ray.store import ConceptStore

    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    state = store.load(u["tenant"], shapes=base.target_shapes(), base_id=base.base_id)
    shut = shut_sets(state)
    assert set(shut) == {"<rex>", "<mia>"} and state.delta.nnz == 0 and state.tokens == {}
    prompt = wc.multi_prompts("seq1")[0][0]
    plain = wc.class_prompt(prompt, ["<rex>", "<mia>"])
    both = generate(base, state.delta, {}, prompt, 1, 0, 2, 4.0, shut=shut)
    one = generate(base, state.delta, {}, prompt.replace("<mia> ", ""), 1, 0, 2, 4.0, shut=shut)
    none = generate(base, None, {}, plain, 1, 0, 2, 4.0)
    assert np.array_equal(generate(base, state.delta, {}, plain, 1, 0, 2, 4.0, shut=shut), none)
    assert not np.array_equal(both, none) and not np.array_equal(both, one)
    weights = {n: w.detach().clone() for n, w in base.target_weights().items()}
    generate(base, state.delta, {}, prompt, 1, 0, 1, 4.0, shut=shut)
    assert all(torch.equal(weights[n], w) for n, w in base.target_weights().items())  # restored bit-exactly
