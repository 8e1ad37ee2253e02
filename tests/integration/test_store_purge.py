"""`cns concepts purge`: a concept erased by replaying the later concepts' learning without it (a Ray task on a real
local Ray), then every version that held it removed. Local folder and S3 (moto's server). Few steps: mechanics."""

from __future__ import annotations

import os

import pytest
import torch

from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.data import example_concepts
from cns_ray.errors import InputError, NotFoundError
from cns_ray.jobs.inputs import INPUTS_KEY, recorded_inputs
from cns_ray.learn import CNSLearner, ConceptRequest
from cns_ray.models import TINY
from cns_ray.store import ConceptStore

CFG = LearnerConfig(steps=3, batch_size=2, resolution=32, token_lr=1e-2, weight_lr=1e-2, reg_lambda=0.0, seed=0,
                    checkpoint_every=0)
EX = example_concepts()


def _learn(base, store, concept: str, record_inputs: bool = True) -> int:
    folder, word = EX[concept]
    req = ConceptRequest(tenant="acme", concept=concept, class_word=word, images=str(folder))
    learner = CNSLearner(base, store, req, CFG)
    while learner.step_index < learner.total_steps:
        learner.step()
    state = learner.result()
    if record_inputs:  # what a learning run (jobs/train.py) records
        state.concepts[-1].stats[INPUTS_KEY] = recorded_inputs(req, CFG)
    return store.commit("acme", state, parent=learner.parent_version)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ConceptStore(StoreConfig(uri=str(tmp_path / "s")))
    bucket = request.getfixturevalue("s3_env")
    return ConceptStore(StoreConfig(uri=f"s3://{bucket}/p"))


def test_purge_rebuilds_without_the_concept_and_removes_versions_holding_it(ray_local, tiny_base, store):
    from cns_ray.jobs.purge import purge_concept

    for c in ("toy", "mug", "sculpture"):
        _learn(tiny_base, store, c)  # v1 {toy}, v2 {toy, mug}, v3 {toy, mug, sculpture}
    v1 = store.load("acme", 1)
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # moto's endpoint, dummy credentials
    out = purge_concept(store.uri(), TINY, "acme", "mug", num_cpus=0.5, env=env)
    assert out == {"version": 4, "removed": [2, 3], "replayed": ["sculpture"]}
    head = store.load("acme")
    assert head.version == 4 and [c.name for c in head.concepts] == ["toy", "sculpture"]
    assert sorted(head.tokens) == ["<sculpture>", "<toy>"]
    assert [h.version for h in store.history("acme")] == [1, 4]
    with pytest.raises(NotFoundError, match="removed"):
        store.rollback("acme", 2)
    toy, sculpture = head.concepts
    assert sculpture.stats["replayed_for_purge"] and sculpture.stats[INPUTS_KEY]["images"] == str(EX["sculpture"][0])
    for layer, d in head.delta.layers.items():  # toy's values off sculpture's neurons are v1's, untouched by mug
        only_toy = ~torch.isin(d.index, sculpture.neurons.get(layer, torch.zeros(0, dtype=torch.long)))
        ref = v1.delta.layers[layer]
        pos = torch.searchsorted(ref.index, d.index[only_toy])
        assert torch.equal(ref.index[pos], d.index[only_toy]) and torch.equal(ref.value[pos], d.value[only_toy])
    assert store.verify() == [] and store.list_tenants() == ["acme"]  # the scratch tenant is gone


def test_purge_refuses_without_stored_inputs(tiny_base, tmp_path):
    from cns_ray.store.purge import plan_purge

    store = ConceptStore(StoreConfig(uri=str(tmp_path / "s")))
    _learn(tiny_base, store, "toy")
    _learn(tiny_base, store, "mug", record_inputs=False)
    with pytest.raises(InputError, match=r"\['mug'\] have no stored inputs"):
        plan_purge(store, "acme", "toy")
    assert plan_purge(store, "acme", "mug").replay == []  # the last concept needs no replay
