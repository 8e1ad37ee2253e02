"""The synthesized concepts as a person sees them: one PNG row per held-out concept.

    python -m pipelines.synth_grid --out docs/eval/synth/grid.png

Each row: 4 rendered references | the base drawing the class-word prompt | the shipped synthesizer's concept
(``a large <k> {shape} at the center on a grey background``, generation seeds 0-3), upscaled 3x.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m pipelines.synth_grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--concepts", nargs="+", default=["mia", "ada", "bo", "kit", "ivo", "rex"])
    p.add_argument("--base-model", default="tiny")
    p.add_argument("--out", default="docs/eval/synth/grid.png")
    p.add_argument("--synthesizer", default=None, help="synthesizer folder (default: the shipped one)")
    args = p.parse_args(argv)

    import numpy as np
    from PIL import Image

    from cns_ray.config import LearnerConfig, StoreConfig
    from cns_ray.eval.generate import generate
    from cns_ray.eval.metric_model import load_metric_model
    from cns_ray.learn import ConceptRequest
    from cns_ray.models import load_base_model
    from cns_ray.store import ConceptStore
    from cns_ray.synth.apply import synthesize_concept
    from cns_ray.synth.synthesizer import Synthesizer, default_synth_folder
    from cns_ray.world import concepts as wc

    base = load_base_model(args.base_model)
    synth = Synthesizer.load(args.synthesizer or default_synth_folder())
    synth.check_base(base.base_id)
    metric = load_metric_model(synth.meta.get("metric", "toy"))

    def strip(images) -> np.ndarray:  # [4, H, W, 3] -> [H, 4W, 3] uint8
        a = np.asarray(images)
        return np.concatenate(list(a if a.dtype == np.uint8 else (a * 255).astype(np.uint8)), axis=1)

    rows = []
    for name in args.concepts:
        c = wc.get_concept(name)
        with tempfile.TemporaryDirectory() as d:
            folder = wc.write_reference_folder(c, f"{d}/refs", n=6)
            store = ConceptStore(StoreConfig(uri=f"{d}/store"))
            req = ConceptRequest("grid", name, c.shape, str(folder), token=c.token)
            version, _ = synthesize_concept(base, store, req, synth, metric, LearnerConfig(augment=False))
            state = store.load("grid", version, shapes=base.target_shapes(), base_id=base.base_id)
        prompt = wc.user_caption("large", c.token, c.shape, "center", "grey")
        floor = generate(base, None, {}, wc.class_prompt(prompt, [c.token]), 4, 0, 20, 4.0)
        synthesized = generate(base, state.delta, state.tokens, prompt, 4, 0, 20, 4.0)
        refs = strip(wc.reference_set(c, 4)[0])
        gap = np.zeros((refs.shape[0], 8, 3), np.uint8)
        rows.append(np.concatenate([refs, gap, strip(floor), gap, strip(synthesized)], axis=1))
        print(f"{name}: {prompt}")
    grid = np.concatenate(rows, 0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
