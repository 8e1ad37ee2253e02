"""Calibration (general-mask scoring) time: in-process vs. 1 vs. 2 scorer actors on local Ray.

    nice -n 10 .venv/bin/python -m benchmarks.bench_calibrate          # tiny-random + SD-1.5-shaped K/V (~3 minutes)
    .venv/bin/python -m benchmarks.bench_calibrate --quick             # tiny-random + a reduced SD-shaped UNet, 1 repeat

The small model is pinned to ``tiny-random`` (random weights, 64 px; :data:`benchmarks.common.BENCH_BASE_MODEL`),
the model the tables in benchmarks/README.md were measured on (named ``tiny`` there, the default then), not the
shipped trained default ``tiny``.

Two parts, on the 20 built-in calibration prompts, ``SelectionConfig()`` defaults, nothing cached (store=None):
1. ``tiny-random``, end to end: :func:`cns_ray.jobs.calibrate.general_masks_info` with ``num_actors`` 0 (in-process),
   1 and 2, on a local Ray started once by :func:`cns_ray.jobs.ray_env.init_ray` (its start-up is reported apart).
   The actor runs include creating the actors and loading the base model in each.
2. Both models, split: actor start + model load (``ready``) and the scoring itself (``score``), through
   :func:`cns_ray.jobs.calibrate.scorer_actor_class` (0.5 CPU each) and :func:`shard_prompts`, as
   ``score_sharded`` does. The SD-shaped case uses :class:`benchmarks.sd_shaped.SDShapedScorer`: the 32 K/V
   weights of an SD-1.5-config UNet (random) and a 2-layer width-768 CLIP text encoder, without the rest of the UNet.
In-process scoring runs at 1 and at 2 torch threads; Ray gives each 0.5-CPU actor 1 thread (reported).
Every sharded result is checked equal to the in-process masks.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import BENCH_BASE_MODEL, QUICK_UNET_CONFIG, SD15_UNET_CONFIG, environment_lines, markdown_table
from benchmarks.sd_shaped import SDShapedScorer
from cns_ray import neurons
from cns_ray.config import SelectionConfig
from cns_ray.jobs.calibrate import CPUS_PER_SCORER, Scorer, general_masks_info, shard_prompts
from cns_ray.select import load_prompts

CFG = SelectionConfig()


def same_masks(a: neurons.Masks, b: neurons.Masks) -> bool:
    return set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}"


def median_of(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# ------------------------------------------------------------------ part 1: tiny-random, end to end
def end_to_end(base, prompts: list[str], repeats: int) -> list[list]:
    rows, ref = [], None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t, res = median_of(lambda: general_masks_info(base, None, CFG, prompts, num_actors=0), repeats)
        ref = res.masks
        rows.append([f"in-process, {threads} torch thread(s)", fmt_s(t), "-", "reference"])
    torch.set_num_threads(2)
    base_t = None
    for k in (1, 2):
        t, res = median_of(lambda: general_masks_info(base, None, CFG, prompts, num_actors=k), repeats)
        base_t = base_t or t
        rows.append([f"{k} scorer actor(s), {res.shards} shard(s)", fmt_s(t), f"{base_t / t:.2f}x",
                     "equal" if same_masks(res.masks, ref) else "DIFFERENT"])
    return rows


# ------------------------------------------------------------------ part 2: ready vs score
def split_row(label: str, actor_cls, make_args: tuple, prompts: list[str], k: int, ref: neurons.Masks) -> tuple[list, float]:
    import ray

    t0 = time.perf_counter()
    shards = shard_prompts(prompts, k)
    actors = [actor_cls.remote(*make_args) for _ in shards]
    try:
        infos = ray.get([a.info.remote() for a in actors])
        t1 = time.perf_counter()
        parts = ray.get([a.score.remote(s, CFG.select_ratio, CFG.prompt_chunk) for a, s in zip(actors, shards)])
        masks = neurons.and_reduce([neurons.unpack_masks(p) for p in parts])
        t2 = time.perf_counter()
    finally:
        for a in actors:
            ray.kill(a)
    threads = sorted({i.get("threads", "?") for i in infos})
    return [label, f"{k} actor(s), {threads} thread(s) each", fmt_s(t1 - t0), fmt_s(t2 - t1), fmt_s(t2 - t0),
            "equal" if same_masks(masks, ref) else "DIFFERENT"], t2 - t1


class _ThreadsScorer(Scorer):
    """:class:`Scorer` that also reports its torch threads (defined here: pickled by value for the actors)."""

    def info(self) -> dict:
        return {**super().info(), "threads": torch.get_num_threads()}


def split(label: str, local: Scorer, actor_cls, make_args: tuple, prompts: list[str], repeats: int) -> list[list]:
    rows, ref = [], None
    in_proc = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        t, packed = median_of(lambda: local.score(prompts, CFG.select_ratio, CFG.prompt_chunk), repeats)
        ref, in_proc[threads] = neurons.unpack_masks(packed), t
        rows.append([label, f"in-process, {threads} thread(s)", "-", fmt_s(t), fmt_s(t), "reference"])
    torch.set_num_threads(2)
    one = None
    for k in (1, 2):
        scores, row = [], None
        for _ in range(repeats):
            row, score_t = split_row(label, actor_cls, make_args, prompts, k, ref)
            scores.append(score_t)
        one = one or statistics.median(scores)
        row[3] = f"{fmt_s(statistics.median(scores))} ({one / statistics.median(scores):.2f}x vs 1 actor)"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, reduced SD-shaped UNet")
    p.add_argument("--repeats", type=int, default=None, help="runs per row, median reported (default 3, quick 1)")
    p.add_argument("--no-sd15", action="store_true", help="skip the SD-shaped part")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    import ray

    from cns_ray.jobs.ray_env import init_ray
    from cns_ray.models import load_base_model

    t_all = time.perf_counter()
    prompts = load_prompts()
    base = load_base_model(BENCH_BASE_MODEL)
    t0 = time.perf_counter()
    init_ray()
    t_ray = time.perf_counter() - t0
    try:
        e2e = end_to_end(base, prompts, repeats)
        tiny_cls = ray.remote(num_cpus=CPUS_PER_SCORER)(_ThreadsScorer)
        label = f"{BENCH_BASE_MODEL} ({len(base.targets())} K/V layers, {sum(w.numel() for w in base.target_weights().values()):,} weights)"
        rows = split(label, _ThreadsScorer(BENCH_BASE_MODEL), tiny_cls, (BENCH_BASE_MODEL,), prompts, repeats)
        if not args.no_sd15:
            cfg = QUICK_UNET_CONFIG if args.quick else SD15_UNET_CONFIG
            t0 = time.perf_counter()
            local = SDShapedScorer(cfg)
            t_build = time.perf_counter() - t0
            n = sum(w.numel() for w in local.weights.values())
            label = f"{'reduced ' if args.quick else ''}SD-1.5-shaped ({len(local.weights)} K/V layers, {n:,} weights)"
            sd_cls = ray.remote(num_cpus=CPUS_PER_SCORER)(SDShapedScorer)
            rows += split(label, local, sd_cls, (cfg,), prompts, max(1, repeats - 1) if not args.quick else 1)
    finally:
        ray.shutdown()
    print("### Calibration: in-process vs 1 vs 2 scorer actors\n")
    print("\n".join(environment_lines()))
    print(f"- {len(prompts)} built-in prompts, select_ratio {CFG.select_ratio}, prompt_chunk {CFG.prompt_chunk}; "
          f"median of {repeats} run(s) per row; local Ray start-up (init_ray, once): {t_ray:.1f} s; "
          f"total {time.perf_counter() - t_all:.0f} s")
    if not args.no_sd15:
        print(f"- SD-shaped scorer built in-process in {t_build:.1f} s (random K/V weights + width-768 text encoder)")
    print(f"\nEnd to end, `general_masks_info({BENCH_BASE_MODEL}, store=None, num_actors=N)` (actor start + model load included):\n")
    print(markdown_table(["scoring", "seconds", "speedup vs 1 actor", "masks"], e2e))
    print("\nSplit: actor start + model load (ready) vs scoring the shards (score), seconds:\n")
    print(markdown_table(["model", "scoring", "ready", "score", "total", "masks"], rows))


if __name__ == "__main__":
    main()
