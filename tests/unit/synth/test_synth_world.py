"""A synthesized concept shows in generated images on the shipped base: ``cns synthesize``'s state for a held-out
world instance (never in the library) draws more of the instance's palette colours than the base drawing the
class-word prompt. Needs the shipped synthesizer of the shipped base (rebuilt with two commands: docs/synthesis.md)."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.eval.pixels import palette_score
from cns_ray.learn import ConceptRequest
from cns_ray.serve.swap import GenerationRequest, ServedTenant, generate_images, weights_digest
from cns_ray.store import ConceptStore
from cns_ray.world import concepts as wc


def _shipped(base):
    from cns_ray.synth.synthesizer import META, Synthesizer, default_synth_folder

    meta = default_synth_folder() / META
    if not meta.exists() or json.loads(meta.read_text()).get("base_id") != base.base_id:
        pytest.skip("the shipped synthesizer is not for the shipped base: python -m pipelines.build_library && "
                    "python -m pipelines.train_synth")
    return Synthesizer.load(default_synth_folder())


def _palette_pixels(base, tenant, prompt, instance, seeds=range(4)) -> float:
    weights, total = base.target_weights(), 0
    for seed in seeds:
        png = generate_images(base, weights, tenant, GenerationRequest(prompt=prompt, steps=20, guidance_scale=4.0, seed=seed))[0]
        s = palette_score(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), instance)
        total += sum(s.counts.values())
    return total / len(seeds)


# Measured with the shipped synthesizer (200-entry library of the base of step 68,500): palette pixels per image,
# class prompt -> synthesized: mia 6 -> 228, ada 29 -> 164 (on the base of 29,600: mia 39 -> 121, ada 12 -> 168;
# ivo 17 -> 33 missed this margin there).
@pytest.mark.parametrize("name", ["mia", "ada"])
def test_a_synthesized_concept_draws_its_palette(tiny_base, tmp_path, name):
    from cns_ray.eval.metric_model import load_metric_model
    from cns_ray.synth.apply import synthesize_concept

    base, synth = tiny_base, _shipped(tiny_base)
    c = wc.get_concept(name)
    folder = wc.write_reference_folder(c, tmp_path / name, n=6)
    store = ConceptStore(StoreConfig(uri=str(tmp_path / "store")))
    cfg = LearnerConfig(augment=False)
    version, stats = synthesize_concept(base, store, ConceptRequest("acme", name, c.shape, str(folder), token=c.token),
                                        synth, load_metric_model(synth.meta.get("metric", "toy")), cfg)
    state = store.load("acme", version, shapes=base.target_shapes(), base_id=base.base_id)
    before = weights_digest(base)
    prompt = wc.user_caption("large", c.token, c.shape, "center", "grey")
    plain = _palette_pixels(base, ServedTenant.empty("acme", base.base_id), wc.class_prompt(prompt, [c.token]), c)
    synthesized = _palette_pixels(base, ServedTenant.from_state(state, "cpu", torch.float32), prompt, c)
    assert weights_digest(base) == before
    print(f"{name}: palette pixels per image: base {plain:.0f}, synthesized {synthesized:.0f} ({stats['seconds']:.2f} s)")
    assert synthesized > 1.5 * plain + 10, (plain, synthesized)
