"""Learning a drawable world instance on the shipped base: its colours appear where the class-word prompt has none.

A user's concept is a specific instance of a class the base knows ("my square <mia>"); after a short CNS run the
user's prompt ``a large <mia> square ...`` draws the instance's palette (exact pixel colours), where the base
drawing ``a large square ...`` draws some other square. No timing: the numbers are colours."""

import numpy as np
from world_base import needs_world_v2_base

from cns_ray.config import LearnerConfig, SelectionConfig, StoreConfig
from cns_ray.eval.generate import generate
from cns_ray.eval.pixels import palette_score
from cns_ray.learn import CNSLearner, ConceptRequest
from cns_ray.select import general_masks_local
from cns_ray.store import ConceptStore
from cns_ray.world import concepts as wc


pytestmark = needs_world_v2_base


def _palette_fit(images, concept) -> float:
    scores = [palette_score(img, concept) for img in images]
    return float(np.mean([s.recall * s.precision for s in scores]))


def test_a_learned_instance_draws_its_palette(fresh_tiny, tmp_path):
    from cns_ray.eval.harness import calibration_prompts

    base = fresh_tiny
    # mia (a two-tone green and red square) is drawable: the base draws its full caption at palette fit ~1.0
    # (pipelines/check_concepts.py); rex's stripes and dot are beyond this base, so 80 steps cannot show much there
    c = wc.get_concept("mia")
    folder = wc.write_reference_folder(c, tmp_path / "mia", n=6)
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    general = general_masks_local(base, calibration_prompts(), SelectionConfig())
    cfg = LearnerConfig(steps=80, batch_size=4, augment=False, seed=0)
    learner = CNSLearner(base, store, ConceptRequest("acme", c.name, c.class_word, str(folder), token=c.token), cfg, general)
    assert learner.data.train_captions[0].count(c.token) == 1
    while learner.step_index < learner.total_steps:
        learner.step()
    state = store.load("acme", learner.commit(), shapes=base.target_shapes(), base_id=base.base_id)
    prompt = wc.user_caption("large", c.token, c.shape, "center", "grey")
    before = generate(base, None, {}, wc.class_prompt(prompt, [c.token]), 4, 0, 20, 4.0)
    after = generate(base, state.delta, state.tokens, prompt, 4, 0, 20, 4.0)
    fit_before, fit_after = _palette_fit(before, c), _palette_fit(after, c)
    assert fit_after > fit_before + 0.2, (fit_before, fit_after)
