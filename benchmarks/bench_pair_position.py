"""Two-concept prompts on ``tiny``: which object fails, and do two-object training drawings help? (docs/method-notes.md)

One tenant learns ``kiki`` then ``boba`` (cns_ray/eval/drawn.py, as in tests/unit/learn/test_user_concepts.py: 120
steps, lambda 0.01, preserve 3); ``--pairs N`` adds N two-object drawings of boba beside kiki (SVDiff's Cut-Mix,
alternately at the right and at the left) to boba's folder, or with ``--partner described`` N drawings of each concept
beside a plain circle its caption describes (``a small plain green circle at the left and a small <kiki> circle at the
right ...``) to both folders. Then both orders of the pair prompt (kiki left and boba
right; boba left and kiki right) are drawn at 8 seeds and each side scored by its palette fit (the object that
belongs there, and the other one). ``--ceiling`` scores the base drawing the same pairs from full captions instead
(what the base itself places). Each concept is also drawn second and first beside a described plain green circle
(``<name>_second``: its own fit at the right; ``<name>_first``: its fit at the left, green's at the right). One JSON
line per run.

    .venv/bin/python benchmarks/bench_pair_position.py --pairs 0 --seed 0
    .venv/bin/python benchmarks/bench_pair_position.py --pairs 4 --seed 0
    .venv/bin/python benchmarks/bench_pair_position.py --pairs 6 --partner described --steps 240 --seed 0
    .venv/bin/python benchmarks/bench_pair_position.py --ceiling
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PAIR = "a small <{}> circle at the left and a small <{}> circle at the right on a grey background"


def _sides(images, left, right) -> dict:
    from cns_ray.eval.drawn import palette_fit

    fit = lambda look, side: round(palette_fit(images, look, side), 3)  # noqa: E731
    return {"left_own": fit(left, "left"), "left_other": fit(right, "left"), "right_own": fit(right, "right"),
            "right_other": fit(left, "right")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=0, help="two-object drawings added to the second concept's folder")
    ap.add_argument("--side", choices=("alternate", "right"), default="alternate",
                    help="where the second concept is in its two-object drawings (default: alternately right and left)")
    ap.add_argument("--partner", choices=("concept", "described"), default="concept",
                    help="who stands beside the concept in its two-object drawings: the earlier concept (boba's folder"
                         " only) or a described plain circle (both folders)")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--preserve", type=float, default=3.0, help="preserve_lambda of both learns")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ceiling", action="store_true", help="the base drawing the pairs from full captions")
    args = ap.parse_args()

    import torch

    from cns_ray.config import LearnerConfig, SelectionConfig, StoreConfig
    from cns_ray.eval.drawn import BOBA, KIKI, palette_fit, write_folder
    from cns_ray.eval.generate import generate
    from cns_ray.eval.harness import calibration_prompts
    from cns_ray.learn import CNSLearner, ConceptRequest
    from cns_ray.models import TINY, load_base_model
    from cns_ray.select import general_masks_local
    from cns_ray.store import ConceptStore
    from cns_ray.world.scene import Look, Obj, Scene, caption

    torch.set_num_threads(1)
    t0 = time.time()
    base = load_base_model(TINY)
    orders = {"kiki_left": (KIKI, BOBA), "boba_left": (BOBA, KIKI)}
    res: dict = {"pairs": args.pairs, "side": args.side, "partner": args.partner, "steps": args.steps,
                 "preserve": args.preserve, "seed": args.seed, "ceiling": args.ceiling}
    if args.ceiling:
        for key, ((_, left), (_, right)) in orders.items():
            prompt = caption(Scene((Obj("circle", left, "small", "left"), Obj("circle", right, "small", "right")), "grey"))
            res[key] = _sides(generate(base, None, {}, prompt, 8, 100, 20, 4.0), left, right) | {"prompt": prompt}
    else:
        tmp = Path(tempfile.mkdtemp(prefix="pair-position-"))
        store = ConceptStore(StoreConfig(uri=str(tmp / "store")))
        general = general_masks_local(base, calibration_prompts(), SelectionConfig())
        cfg = LearnerConfig(steps=args.steps, batch_size=4, augment=False, seed=args.seed, reg_lambda=0.01,
                            preserve_lambda=args.preserve)
        for name, look in (KIKI, BOBA):
            folder = write_folder(tmp, name, look, KIKI if name == "boba" else None, args.pairs, args.side, args.partner)
            learner = CNSLearner(base, store, ConceptRequest("acme", name, "circle", str(folder), token=f"<{name}>"), cfg, general)
            while learner.step_index < learner.total_steps:
                learner.step()
            learner.commit()
        st = store.load("acme", shapes=base.target_shapes(), base_id=base.base_id)
        for name, look in (KIKI, BOBA):
            res[f"{name}_alone"] = round(palette_fit(generate(base, st.delta, st.tokens, f"a large <{name}> circle at the center on a grey background", 8, 100, 20, 4.0), look), 3)
        green = Look("green", "plain")
        for name, look in (KIKI, BOBA):
            im = generate(base, st.delta, st.tokens, f"a small plain green circle at the left and a small <{name}> circle at the right on a grey background", 8, 100, 20, 4.0)
            res[f"{name}_second"] = round(palette_fit(im, look, "right"), 3)
            im = generate(base, st.delta, st.tokens, f"a small <{name}> circle at the left and a small plain green circle at the right on a grey background", 8, 100, 20, 4.0)
            res[f"{name}_first"] = [round(palette_fit(im, look, "left"), 3), round(palette_fit(im, green, "right"), 3)]
        for key, ((ln, left), (rn, right)) in orders.items():
            res[key] = _sides(generate(base, st.delta, st.tokens, PAIR.format(ln, rn), 8, 100, 20, 4.0), left, right)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
