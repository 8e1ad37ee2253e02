"""Learner step time, peak memory and optimizer state: CNS vs. dense K/V fine-tune vs. rank-4 LoRA.

    nice -n 10 .venv/bin/python -m benchmarks.bench_learn            # tiny-random + SD-1.5-shaped UNet (~5 minutes)
    .venv/bin/python -m benchmarks.bench_learn --quick               # tiny-random + a reduced SD-shaped UNet, few steps

Every (model, method) runs in a fresh subprocess (``--worker``) so memory figures do not mix. All three methods
train the same placeholder token (Adam, lr 5e-4) through the same :meth:`cns_ray.learn.CNSLearner.step` (same
data, augmentation, VAE encode, text encoder, noise loss); only the UNet side differs:
- ``cns``: the learner as built: Adam on the concept neurons' values only; each target K/V layer runs
  ``cns_ray.learn.sparse_linear.SparseDeltaLinear`` (``W_start.index_put(idx, values)`` only inside its forward), plus L_reg;
- ``dense``: every attn2.to_k/to_v weight trainable in place (Adam, lr 3e-5), plain forward;
- ``lora``: peft ``LoraConfig(r=4, lora_alpha=4)`` injected into the same attn2.to_k/to_v modules (Adam, lr 1e-4).
The tenant has no earlier concepts. Models (``--models``): ``tiny-random`` (random weights, native 64 px -> 32x32
latents; pinned as the default, :data:`benchmarks.common.BENCH_BASE_MODEL`: the tables in benchmarks/README.md were
measured on it, named ``tiny`` there, the default then; any other base model spec, e.g. the shipped trained
``tiny``, also works) and ``sd15``: an SD-1.5-config UNet with random weights, a 2-layer width-768 CLIP text encoder
and the tiny-random VAE (32 px -> 16x16 latents).

Memory: Linux ``VmHWM`` (peak RSS) reset through ``/proc/self/clear_refs`` after setup, so ``step peak`` =
highest RSS over the warm-up + timed steps minus the RSS just before the first step (optimizer state, grads,
activations, weight copies). The worker runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors go back to the
OS and RSS tracks live memory. (tracemalloc does not see torch's allocations.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.common import (
    BENCH_BASE_MODEL,
    QUICK_UNET_CONFIG,
    SD15_UNET_CONFIG,
    environment_lines,
    fmt_bytes,
    markdown_table,
)

METHODS = ("cns", "dense", "lora")
LORA_RANK = 4
LORA_LR = 1e-4
SD_LATENT = 16
RECORDED_LRS = {"token_lr": 5e-4, "weight_lr": 3e-5}
"""The learning rates the recorded tables used (then LearnerConfig's defaults), pinned: step time and memory do
not depend on them, but the docstring and benchmarks/README.md state them."""


# ------------------------------------------------------------------ worker (one model, one method)
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _build(model: str, quick: bool, masks_file: str):
    """(base, LearnerConfig, general masks); the general masks are cached in ``masks_file`` across workers."""
    from cns_ray import select
    from cns_ray.config import LearnerConfig

    if model != "sd15":  # a base model spec (default: BENCH_BASE_MODEL), at its native resolution
        from cns_ray.models import load_base_model

        base = load_base_model(model)
        cfg = LearnerConfig(batch_size=4, seed=0, **RECORDED_LRS)
    else:
        from benchmarks.sd_shaped import sd_shaped_base

        base = sd_shaped_base(QUICK_UNET_CONFIG if quick else SD15_UNET_CONFIG)
        cfg = LearnerConfig(batch_size=1, resolution=2 * SD_LATENT, seed=0, **RECORDED_LRS)
    if os.path.exists(masks_file):
        general = torch.load(masks_file)
    else:
        general = select.general_masks_local(base, select.load_prompts(), cfg.selection)
        torch.save(general, masks_file)
    return base, cfg, general


def _to_dense(learner) -> list[torch.Tensor]:
    """Turn ``learner`` into a dense K/V fine-tune: every target weight trainable in place, no override."""
    weights = [w.requires_grad_(True) for w in learner.base.target_weights().values()]
    learner.values, learner.reg_target, learner._override = {}, {}, []
    learner.optimizer = torch.optim.Adam(
        [{"params": [learner.token_embedding], "lr": learner.cfg.token_lr}, {"params": weights, "lr": learner.cfg.weight_lr}]
    )
    return weights


def _to_lora(learner) -> list[torch.Tensor]:
    """Turn ``learner`` into a rank-4 LoRA fine-tune (peft) on the same attn2.to_k/to_v modules."""
    from peft import LoraConfig

    names = sorted(learner.base.target_weights())
    unet = learner.base.unet
    unet.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian", target_modules=names))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    learner.values, learner.reg_target, learner._override = {}, {}, []
    learner.optimizer = torch.optim.Adam(
        [{"params": [learner.token_embedding], "lr": learner.cfg.token_lr}, {"params": params, "lr": LORA_LR}]
    )
    return params


def _optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")
    )


def run_worker(model: str, method: str, steps: int, warmup: int, quick: bool, masks_file: str) -> dict:
    from cns_ray.config import StoreConfig
    from cns_ray.data import example_concepts
    from cns_ray.learn import CNSLearner, ConceptRequest
    from cns_ray.store import ConceptStore

    base, cfg, general = _build(model, quick, masks_file)
    folder, word = example_concepts()["toy"]
    with tempfile.TemporaryDirectory() as tmp:
        store = ConceptStore(StoreConfig(uri=tmp))
        req = ConceptRequest(tenant="bench", concept="toy", class_word=word, images=str(folder))
        learner = CNSLearner(base, store, req, cfg, general)
        nnz = int(sum(i.numel() for i in learner.indices.values()))
        targets = base.target_weights()  # before peft wraps the modules
        n_targets, n_weights = len(targets), int(sum(w.numel() for w in targets.values()))
        if method == "dense":
            trainable = [learner.token_embedding, *_to_dense(learner)]
        elif method == "lora":
            trainable = [learner.token_embedding, *_to_lora(learner)]
        else:
            trainable = learner.trainable_tensors()
        rss0 = _status_kb("VmRSS")
        reset = _reset_peak()
        times, cpu = [], []
        for i in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            learner.step()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        peak = _status_kb("VmHWM")
    return {
        "model": model,
        "method": method,
        "target_weights": n_weights,
        "target_layers": n_targets,
        "nnz": nnz,
        "trainable": int(sum(t.numel() for t in trainable)),
        "step_s": statistics.median(times),
        "step_s_all": times,
        "cpu_s": statistics.median(cpu),
        "rss_before_kb": rss0,
        "peak_kb": peak,
        "peak_reset": reset,
        "opt_bytes": _optimizer_state_bytes(learner.optimizer),
        "batch": cfg.batch_size,
        "latent": (cfg.resolution or base.resolution) // base.pipeline.vae_scale_factor,
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------ driver
def spawn(model: str, method: str, args, masks_file: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_learn", "--worker", model, method, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--masks-file", masks_file] + (["--quick"] if args.quick else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"worker {model}/{method} failed (rc {out.returncode})")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    print(f"  {model}/{method}: {res['step_s'] * 1e3:.0f} ms/step, worker {res['wall_s']:.0f} s", file=sys.stderr)
    return res


def ratio(x: float, ref: float) -> str:
    if ref == 0:
        return "-"
    r = x / ref
    return f"{r:.2f}x" if r >= 0.1 else f"1/{1 / r:.0f}" if r > 0 else "0"


def table(results: list[dict]) -> str:
    rows = []
    for r in results:
        dense = next(x for x in results if x["model"] == r["model"] and x["method"] == "dense")
        lora = next(x for x in results if x["model"] == r["model"] and x["method"] == "lora")
        peak = (r["peak_kb"] - r["rss_before_kb"]) * 1024
        ref_peak = [(x["peak_kb"] - x["rss_before_kb"]) * 1024 for x in (dense, lora)]
        label = {"cns": f"CNS ({r['nnz']:,} neurons = {r['nnz'] / r['target_weights']:.2%})", "dense": "dense K/V",
                 "lora": f"LoRA r={LORA_RANK} (peft)"}[r["method"]]
        rows.append([
            f"{r['model']} ({r['target_layers']} K/V layers, {r['latent']}x{r['latent']} latents, batch {r['batch']})",
            label,
            f"{r['trainable']:,}",
            f"{r['step_s'] * 1e3:.0f} (min {min(r['step_s_all']) * 1e3:.0f})",
            f"{r['cpu_s'] * 1e3:.0f}",
            f"{ratio(r['cpu_s'], dense['cpu_s'])} / {ratio(r['cpu_s'], lora['cpu_s'])}",
            f"{fmt_bytes(peak)} (RSS {r['peak_kb'] / 1e6:.2f} GB)",
            f"{ratio(peak, ref_peak[0])} / {ratio(peak, ref_peak[1])}",
            fmt_bytes(r["opt_bytes"]),
            f"{ratio(r['opt_bytes'], dense['opt_bytes'])} / {ratio(r['opt_bytes'], lora['opt_bytes'])}",
        ])
    headers = ["model", "method", "trainable", "step wall ms (median)", "step CPU ms (median)", "CPU time vs dense / LoRA", "step peak over start",
               "peak vs dense / LoRA", "Adam state", "state vs dense / LoRA"]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="reduced SD-shaped UNet and few steps (smoke run)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default 10, quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default 1: on a shared 2-core machine 2 threads ran ~8x slower)")
    p.add_argument("--models", default=f"{BENCH_BASE_MODEL},sd15",
                   help="comma list of sd15 and base model specs (default %(default)s: the recorded tables' models)")
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    p.add_argument("--masks-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps if args.steps is not None else (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(run_worker(*args.worker, args.steps, args.warmup, args.quick, args.masks_file)))
        return
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            masks_file = os.path.join(tmp, f"general-{len(results)}.pt")  # model specs may be paths
            for method in METHODS:
                results.append(spawn(model, method, args, masks_file))
    sd_name = "reduced SD-shaped UNet (--quick)" if args.quick else "SD-1.5-config UNet"
    print(f"### Learner step: CNS vs dense K/V vs LoRA r={LORA_RANK}\n")
    print("\n".join(environment_lines()).replace(f"torch threads: {torch.get_num_threads()}", f"torch threads per worker: {args.threads}"))
    print(f"- `sd15` = {sd_name}, random fp32 weights, 2-layer width-768 CLIP text encoder, tiny-random VAE; CPU")
    print(f"- {args.steps} timed steps after {args.warmup} warm-up per method, each method in a fresh process; "
          f"total {time.perf_counter() - t0:.0f} s")
    print("- step peak over start: peak RSS over warm-up + timed steps (VmHWM reset via /proc/self/clear_refs) minus "
          "RSS before the first step; Adam state: sum of exp_avg + exp_avg_sq bytes")
    print("- step CPU ms = process CPU time of the step (1 torch thread): less sensitive than wall time to other "
          "processes on the machine, so the ratios use it\n")
    print(table(results))


if __name__ == "__main__":
    main()
