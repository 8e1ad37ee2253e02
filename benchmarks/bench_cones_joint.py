"""Cones at toy scale: two concepts concatenated in one prompt, with and without the joint refinement
(``cones_joint``), at a few ratios, scored as ``cns eval`` scores a two-concept prompt (readout and pixel palette).

The joint images are the two instances rendered side by side on the backgrounds other than the prompt's. Prints a
Markdown table; run by hand (a few minutes on 2 cores), results in docs/cones.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image

from cns_ray.config import LearnerConfig, StoreConfig
from cns_ray.eval.config import EvalConfig
from cns_ray.eval.harness import Measure
from cns_ray.eval.methods import shut_sets
from cns_ray.eval.scoring import load_scorer
from cns_ray.learn import ConceptRequest, make_learner
from cns_ray.models import load_base_model
from cns_ray.serve.swap import ServedTenant
from cns_ray.store import ConceptStore
from cns_ray.world import concepts as wc
from cns_ray.world.render import render_scene
from cns_ray.world.scene import BACKGROUNDS


def _learn(base, store, req: ConceptRequest, cfg: LearnerConfig) -> None:
    learner = make_learner(base, store, req, cfg)
    while learner.step_index < learner.total_steps:
        learner.step()
    learner.commit()


def pair_run(base, m: Measure, scorer, sequence: str, ratio: float, steps: int, joint_steps: int) -> dict:
    prompt, a, b, bg = wc.multi_prompts(sequence)[0]
    A, B = wc.get_concept(a), wc.get_concept(b)
    tmp = Path(tempfile.mkdtemp(prefix="cns-cones-joint-"))
    store = ConceptStore(StoreConfig(uri=str(tmp / "store")))
    lc = LearnerConfig(steps=steps, batch_size=4, augment=False, seed=0, method="cones", cones_ratio=ratio)
    for c in (A, B):
        folder = wc.write_reference_folder(c, tmp / c.name, m.cfg.n_ref, m.cfg.seed)
        _learn(base, store, ConceptRequest("t", c.name, c.shape, str(folder), token=c.token), lc)
    st = store.load("t", shapes=base.target_shapes(), base_id=base.base_id)
    m.shut = shut_sets(st)
    union = m.pair(st.delta, {}, prompt, A, B)[0]
    folder = tmp / "joint"
    folder.mkdir()
    caps = []
    for i, g in enumerate(x for x in BACKGROUNDS if x != bg):
        Image.fromarray(render_scene(wc.pair_scene(A, B, g), base.resolution)).save(folder / f"{i:02d}.png")
        caps.append(wc.pair_prompt(A, B, g))
    (folder / "captions.txt").write_text("\n".join(caps) + "\n")
    jc = LearnerConfig(steps=joint_steps, batch_size=4, augment=False, seed=0, method="cones", cones_ratio=ratio,
                       cones_joint=(a, b))
    _learn(base, store, ConceptRequest("t", f"{a}_{b}", "pair", str(folder)), jc)
    served = ServedTenant.from_state(store.load("t", shapes=base.target_shapes(), base_id=base.base_id), "cpu", torch.float32)
    text, named = served.cones_in(prompt)
    m.shut = {}
    joint = scorer.pair(m.images(served.delta_for(named, base.target_weights()), {}, text), A, B)
    floor = m.pair(None, {}, wc.class_prompt(prompt, [A.token, B.token]), A, B)[0]
    return {"pair": f"{a}+{b}", "floor": floor, "union": union, "joint": joint}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-model", default="tiny")
    p.add_argument("--sequences", nargs="+", default=["seq1", "seq2"])
    p.add_argument("--ratios", default="0.005,0.01,0.02")
    p.add_argument("--steps", type=int, default=20, help="score steps per concept (default %(default)s)")
    p.add_argument("--joint-steps", type=int, default=10, help="joint refinement steps (default %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    base = load_base_model(args.base_model)
    cfg = EvalConfig(base_model=args.base_model)
    scorer = load_scorer(cfg.metric_model, cfg.n_ref, cfg.seed, base.resolution)
    m = Measure(base, scorer, cfg)
    print(f"base {args.base_model} ({base.base_id}); readout (pixel) of the two-concept prompt")
    print("| pair | ratio | floor | union shut | union + joint set |")
    print("|---|---|---|---|---|")
    for seq in args.sequences:
        for ratio in (float(x) for x in args.ratios.split(",")):
            r = pair_run(base, m, scorer, seq, ratio, args.steps, args.joint_steps)
            cell = lambda s: f"{s['readout']:.3f} ({s['pixel']:.3f})"  # noqa: E731
            print(f"| {r['pair']} | {ratio:.1%} | {cell(r['floor'])} | {cell(r['union'])} | {cell(r['joint'])} |", flush=True)


if __name__ == "__main__":
    main()
