"""The opt-in selection variants of SelectionConfig on the tiny base (docs/method-notes.md): ``exclusive`` (a tenant's
concepts own disjoint weights) and ``token_warmup`` (selection scores the caption with a warmed-up placeholder)."""

import pytest
import torch

from cns_ray import select
from cns_ray.config import LearnerConfig, SelectionConfig, StoreConfig
from cns_ray.data import example_concepts
from cns_ray.errors import ConfigError
from cns_ray.learn import CNSLearner, ConceptRequest
from cns_ray.layers import placeholder_slots, spliced_embeddings
from cns_ray.neurons import feature_norms
from cns_ray.store import ConceptStore

CFG = LearnerConfig(steps=3, batch_size=2, resolution=32, token_lr=1e-2, weight_lr=1e-2, seed=0)
FOLDER, WORD = example_concepts()["toy"]


def learner(tiny_base, store, concept, general, **selection):
    cfg = LearnerConfig(**{**CFG.to_dict(), "selection": SelectionConfig(**selection)})
    req = ConceptRequest(tenant="acme", concept=concept, class_word=WORD, images=str(FOLDER))
    return CNSLearner(tiny_base, store, req, cfg, general)


def learn_two(tiny_base, tmp_path, general, **selection):
    """One tenant learns 'one' then 'two' from the same images and captions; returns both learners."""
    store = ConceptStore(StoreConfig(uri=str(tmp_path)))
    first = learner(tiny_base, store, "one", general, **selection)
    while first.step_index < first.total_steps:
        first.step()
    first.commit()
    return first, learner(tiny_base, store, "two", general, **selection)


@pytest.fixture(scope="module")
def general(tiny_base):
    return select.general_masks_local(tiny_base, select.load_prompts(), SelectionConfig())


def test_same_captions_same_neurons_by_default_disjoint_and_full_when_exclusive(tiny_base, general, tmp_path):
    a, b = learn_two(tiny_base, tmp_path / "default", general)
    assert set(a.indices) == set(b.indices) and all(torch.equal(a.indices[n], b.indices[n]) for n in a.indices)
    ea, eb = learn_two(tiny_base, tmp_path / "exclusive", general, exclusive=True)
    assert all(torch.equal(ea.indices[n], a.indices[n]) for n in a.indices)  # a tenant's first concept: unchanged
    for n in eb.indices:
        assert not bool(torch.isin(eb.indices[n], ea.indices.get(n, torch.empty(0, dtype=torch.long))).any()), n
        assert not bool(general[n].reshape(-1)[eb.indices[n].cpu()].any()), n
    assert eb.overlap_count == 0 < b.overlap_count
    count = lambda ln: sum(int(i.numel()) for i in ln.indices.values())  # noqa: E731
    assert count(eb) == count(b) > 0  # the budget is filled again


def test_token_informed_selection_scores_the_warmed_token(tiny_base, general, tmp_path):
    store = ConceptStore(StoreConfig(uri=str(tmp_path)))
    plain = learner(tiny_base, store, "one", general)
    warm = learner(tiny_base, store, "one", general, token_warmup=4)
    again = learner(tiny_base, store, "one", general, token_warmup=4)
    assert not torch.equal(warm.token_embedding, plain.token_embedding)  # the warm-up moved the token
    assert all(torch.equal(warm.indices[n], again.indices[n]) for n in warm.indices)  # deterministic (resume)

    def concept_for(vector):
        ids = warm.input_ids
        mask = warm.tokenizer(warm.data.train_captions, padding="max_length",
                              max_length=warm.tokenizer.model_max_length, return_tensors="pt").attention_mask
        with torch.no_grad(), spliced_embeddings(warm.text_encoder, placeholder_slots(ids, [warm.token_id]), [vector]):
            norms = feature_norms(warm.text_encoder(ids)[0], mask)
        return select.select_concept(tiny_base, warm.data.captions, general, warm.cfg.selection, norms=norms).concept

    got = warm.selection.concept
    assert all(torch.equal(got[n], m) for n, m in concept_for(warm.token_embedding.detach()).items())
    other = concept_for(warm.token_embedding.detach() + 0.5 * torch.randn(warm.token_embedding.shape, generator=torch.Generator().manual_seed(0)))
    assert any(not torch.equal(got[n], m) for n, m in other.items())  # the set depends on the token vector
    assert any(not torch.equal(got[n], m) for n, m in plain.selection.concept.items())


def test_token_warmup_must_not_be_negative():
    with pytest.raises(ConfigError, match="token_warmup=-1"):
        SelectionConfig(token_warmup=-1)
