"""A Cones concept learned on the shipped base shows in generated images: shutting its neurons (a prompt naming
its token) draws more of the instance's palette colours than the base drawing the class-word prompt, and more than
shutting as many random K/V weights (so the effect is the selection's, not any damage). No timing: colours."""

import io

import numpy as np
import torch
from PIL import Image

from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.eval.pixels import palette_score
from cns_ray.learn import ConceptRequest, make_learner
from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images, weights_digest
from cns_ray.store import ConceptStore
from cns_ray.world import concepts as wc


def _palette_pixels(base, weights, tenant, prompt, instance) -> float:
    total = 0
    for seed in range(3):
        png = generate_images(base, weights, tenant, GenerationRequest(prompt=prompt, steps=20, guidance_scale=4.0, seed=seed))[0]
        total += sum(palette_score(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), instance).counts.values())
    return total / 3


def test_a_learned_cones_concept_draws_its_palette(tiny_base, tmp_path):
    base = tiny_base
    c = wc.get_concept("mia")  # drawable on the v2 base (its full caption: palette 1.00; docs/eval/v2/drawable.json)
    folder = wc.write_reference_folder(c, tmp_path / c.name, n=6)
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    cfg = LearnerConfig(steps=20, batch_size=4, augment=False, seed=0, method="cones", cones_ratio=0.02)
    learner = make_learner(base, store, ConceptRequest("acme", c.name, c.class_word, str(folder), token=c.token), cfg)
    while learner.step_index < learner.total_steps:
        learner.step()
    state = store.load("acme", learner.commit(), shapes=base.target_shapes(), base_id=base.base_id)
    rec = state.concept(c.name)
    served = ServedTenant.from_state(state, "cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    control = ServedTenant(tenant="ctl", version=1, delta=state.delta, tokens={}, shut={c.token: {
        n: torch.randperm(base.target_shapes()[n][0] * base.target_shapes()[n][1], generator=g)[: i.numel()].sort().values
        for n, i in rec.neurons.items()}})
    weights = base.target_weights()
    before = weights_digest(base)
    prompt = wc.user_caption("large", c.token, c.shape, "center", "grey")
    plain = _palette_pixels(base, weights, ServedTenant.empty("acme", base.base_id), wc.class_prompt(prompt, [c.token]), c)
    cones = _palette_pixels(base, weights, served, prompt, c)
    random = _palette_pixels(base, weights, control, prompt, c)
    assert weights_digest(base) == before
    print(f"palette pixels per image: base {plain:.0f}, cones {cones:.0f}, random shut {random:.0f}")
    assert cones > 2 * plain and cones > 1.5 * random, (plain, cones, random)
