"""GPU benchmark: SD-1.5-shaped swap round trip, mixed-tenant batches vs single-tenant batches, learner step vs LoRA.

    bash benchmarks/gpu.sh                  # one CUDA device, fp16, SD-1.5 UNet config at 512 px (<= 8 minutes)
    bash benchmarks/gpu.sh --quick          # the same code on CPU, fp32, a small SD-shaped UNet (CI-sized, < 1 min)

Three tables, markdown, one process:
1. **Swap round trip**: ``cns_ray.delta.apply_`` + ``restore_`` of a random tenant delta at 0.1%, 1%, 5% of the 32
   K/V weights of an SD-1.5-config UNet, device-synchronised; base weights bit-identical after every swap.
2. **Batches**: ``cns_ray.serve.batch.generate_batch`` on an SD-1.5-config UNet (random weights, width-768 text
   encoder, the tiny VAE; ``sd_shaped_base``) with 64 tenants holding random 1% deltas: per batch size B in
   1/4/8/16, (a) a mixed batch of B requests of B distinct tenants, (b) a single-tenant batch of B (the delta swapped
   in once: what a one-tenant system runs), (c) the same B requests one at a time on the swap path
   (``generate_images``). Images/s and the ratios mixed / single-tenant and mixed / swap.
   Headline (GPU): mixed batch of 8 with 8 tenants >= 0.9x a single-tenant batch of 8 and >= 3x the swap path.
3. **Learner step**: :meth:`cns_ray.learn.CNSLearner.step` on the same SD-shaped base (CNS values on the concept
   neurons) vs the same step with a rank-4 LoRA on the 32 K/V layers instead (peft if installed, else a plain
   rank-4 adapter as forward hooks); ms per step, trainable parameters, Adam state bytes.
On a GPU the base runs in fp16 (the learner keeps its trainable values in fp32); --quick runs fp32 on CPU.
Timings are medians of ``--reps`` after a warm-up; compare ratios of one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from benchmarks.common import QUICK_UNET_CONFIG, SD15_UNET_CONFIG, environment_lines, fmt_bytes, markdown_table

# a small SD-shaped UNet for --quick: SD's block types and text width (768), narrow channels, CPU-sized
TINY_SD_CONFIG: dict = {**QUICK_UNET_CONFIG, "block_out_channels": (32, 64), "attention_head_dim": 4}
BATCH_SIZES = (1, 4, 8, 16)
TENANTS = 64
DENSITY = 0.01
SWAP_FRACTIONS = (0.001, 0.01, 0.05)
LORA_RANK = 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WARMUP = 1


def timed(fn, device, reps: int, warmup: int | None = None) -> list[float]:
    warmup = WARMUP if warmup is None else warmup
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


# ------------------------------------------------------------------ 1. swap round trip
def swap_table(base, device, reps: int, gen: torch.Generator) -> list[list]:
    from benchmarks.bench_swap import random_delta
    from cns_ray.delta import apply_, restore_

    weights = base.target_weights()
    orig = {n: w.detach().clone() for n, w in weights.items()}
    specs = base.targets()
    rows = []
    for frac in SWAP_FRACTIONS:
        cpu = random_delta(specs, frac, gen)
        from cns_ray.delta import LayerDelta, SparseDelta

        delta = SparseDelta(base.base_id, cpu.shapes, {n: LayerDelta(d.index.to(device), d.value.to(device, weights[n].dtype))
                                                      for n, d in cpu.layers.items()})
        ap, rs = [], []
        for i in range(reps + 2):
            sync(device)
            t0 = time.perf_counter()
            originals = apply_(weights, delta, base.base_id, check_entries=False)
            sync(device)
            t1 = time.perf_counter()
            restore_(weights, originals)
            sync(device)
            if i >= 2:
                ap.append(t1 - t0)
                rs.append(time.perf_counter() - t1)
        same = all(torch.equal(weights[n], orig[n]) for n in orig)
        rows.append([f"{frac:.1%} of K/V ({delta.nnz:,} entries)", f"{med_ms(ap):.2f}", f"{med_ms(rs):.2f}",
                     f"{med_ms([a + b for a, b in zip(ap, rs)]):.2f}", "yes" if same else "NO"])
    return rows


# ------------------------------------------------------------------ 2. batches
def make_tenants(base, n: int, device, dtype, gen: torch.Generator):
    from cns_ray.delta import LayerDelta, SparseDelta
    from cns_ray.serve.swap import ServedTenant
    from cns_ray.store import TenantState

    dim = base.text_encoder.get_input_embeddings().weight.shape[1]
    out = []
    for i in range(n):
        layers = {}
        for name, (o, k) in base.target_shapes().items():
            idx = torch.randperm(o * k, generator=gen)[: max(1, round(DENSITY * o * k))].sort().values
            layers[name] = LayerDelta(idx, torch.randn(idx.numel(), generator=gen) * 1e-3)
        st = TenantState(tenant=f"t{i}", version=1, base_id=base.base_id,
                         delta=SparseDelta(base.base_id, base.target_shapes(), layers),
                         tokens={f"<t{i}>": torch.randn(dim, generator=gen) * 0.01}, concepts=[])
        out.append(ServedTenant.from_state(st, device, dtype))
    return out


def batch_table(base, tenants, args, device) -> tuple[list[list], dict]:
    from cns_ray.serve.batch import generate_batch
    from cns_ray.serve.swap import GenerationRequest, generate_images

    weights = base.target_weights()

    def req(t, i):
        return GenerationRequest(prompt=f"a photo of <{t.tenant}> dog on the grass", steps=args.steps,
                                 guidance_scale=7.5, seed=i, height=args.size, width=args.size)

    rows, headline = [], {}
    for b in BATCH_SIZES:
        mixed_items = [(tenants[i % len(tenants)], req(tenants[i % len(tenants)], i)) for i in range(b)]
        single_items = [(tenants[0], req(tenants[0], i)) for i in range(b)]
        t_mixed = timed(lambda: generate_batch(base, weights, mixed_items), device, args.reps)
        t_single = timed(lambda: generate_batch(base, weights, single_items), device, args.reps)
        t_swap = timed(lambda: [generate_images(base, weights, s, r) for s, r in mixed_items], device, args.reps)
        ips = {k: b / statistics.median(v) for k, v in (("mixed", t_mixed), ("single", t_single), ("swap", t_swap))}
        rows.append([str(b), str(len({s.tenant for s, _ in mixed_items})), f"{ips['mixed']:.2f}", f"{ips['single']:.2f}",
                     f"{ips['swap']:.2f}", f"{ips['mixed'] / ips['single']:.2f}x", f"{ips['mixed'] / ips['swap']:.2f}x"])
        if b == 8:
            headline = {"vs_single": ips["mixed"] / ips["single"], "vs_swap": ips["mixed"] / ips["swap"]}
    return rows, headline


# ------------------------------------------------------------------ 3. learner step
def _plain_lora(learner, rank: int) -> list[torch.Tensor]:
    """Rank-``rank`` adapters on the target modules as forward hooks (``out += scale * x A^T B^T``): the LoRA compute
    where peft is not installed. Returns the trainable A, B tensors."""
    params, mods = [], learner.base.target_modules()
    for name, m in mods.items():
        w = m.weight
        a = (torch.randn(rank, w.shape[1], device=w.device) / w.shape[1] ** 0.5).requires_grad_(True)  # [r, in]
        bm = torch.zeros(w.shape[0], rank, device=w.device).requires_grad_(True)  # [out, r]
        m.register_forward_hook(lambda _m, inp, out, a=a, bm=bm: out + (inp[0].to(a.dtype) @ a.T @ bm.T).to(out.dtype))
        params += [a, bm]
    return params


def learner_table(base, args, device) -> list[list]:
    from cns_ray import select
    from cns_ray.config import LearnerConfig, StoreConfig
    from cns_ray.data import example_concepts
    from cns_ray.learn import CNSLearner, ConceptRequest
    from cns_ray.store import ConceptStore

    cfg = LearnerConfig(batch_size=1, resolution=args.learn_size, seed=0)
    general = select.general_masks_local(base, select.load_prompts(), cfg.selection)
    folder, word = example_concepts()["toy"]
    rows = []
    for method in ("cns", "lora"):
        with tempfile.TemporaryDirectory() as tmp:
            store = ConceptStore(StoreConfig(uri=tmp))
            learner = CNSLearner(base, store, ConceptRequest(tenant="bench", concept="toy", class_word=word,
                                                             images=str(folder)), cfg, general)
            how = "CNS (concept-neuron values)"
            if method == "lora":
                try:
                    from benchmarks.bench_learn import _to_lora

                    params, how = _to_lora(learner), f"LoRA r={LORA_RANK} (peft)"
                except ImportError:
                    params, how = _plain_lora(learner, LORA_RANK), f"LoRA r={LORA_RANK} (plain hooks; peft not installed)"
                    learner.values, learner.reg_target, learner._override = {}, {}, []
                    learner.optimizer = torch.optim.Adam([{"params": [learner.token_embedding], "lr": cfg.token_lr},
                                                          {"params": params, "lr": 1e-4}])
                trainable = [learner.token_embedding, *params]
            else:
                trainable = learner.trainable_tensors()
            times = timed(learner.step, device, args.learn_steps)
            state = sum(t.numel() * t.element_size() for s in learner.optimizer.state.values()
                        for k, t in s.items() if k in ("exp_avg", "exp_avg_sq"))
            rows.append([how, f"{sum(t.numel() for t in trainable):,}", f"{med_ms(times):.1f}", fmt_bytes(state)])
            if method == "lora" and hasattr(base.unet, "peft_config"):
                base.unet.delete_adapters(list(base.unet.peft_config))
            for m in base.target_modules().values():
                m._forward_hooks.clear()
    ref = float(rows[1][2])
    for r in rows:
        r.insert(3, f"{float(r[2]) / ref:.2f}x")
    return rows


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU, fp32, small SD-shaped UNet: the CI smoke run")
    ap.add_argument("--reps", type=int, default=None, help="timed repeats per row (default 3, quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per image (default 20, quick 2)")
    ap.add_argument("--size", type=int, default=None, help="image side in px (default 128 = 64x64 latents, SD's 512 px "
                    "latent size with the 2x tiny VAE; quick 16)")
    ap.add_argument("--only", default="swap,batch,learn", help="comma list of parts to run (default all)")
    args = ap.parse_args(argv)
    q = args.quick
    args.reps = args.reps or (1 if q else 3)
    args.steps = args.steps or (2 if q else 20)
    args.size = args.size or (16 if q else 128)
    args.learn_size, args.learn_steps = (16, 1) if q else (128, 5)
    global WARMUP
    WARMUP = 0 if q else 1  # --quick checks that everything runs; its timings are not a result
    if not q and not torch.cuda.is_available():
        print("benchmarks/gpu.sh: no CUDA device (torch.cuda.is_available() is False): run on a GPU machine, or pass "
              "--quick for the CPU smoke run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if q else "cuda")
    if q:
        torch.set_num_threads(1)  # on a shared small CPU box 2+ threads ran several times slower
    dtype = torch.float32 if q else torch.float16
    from benchmarks.sd_shaped import sd_shaped_base

    t0 = time.perf_counter()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    base = sd_shaped_base(TINY_SD_CONFIG if q else SD15_UNET_CONFIG)
    base.pipeline.to(device, dtype)
    parts = set(args.only.split(","))
    print("## GPU benchmark" + (" (--quick: CPU, fp32, small SD-shaped UNet)" if q else ""))
    print("\n".join(environment_lines()))
    if device.type == "cuda":
        print(f"- device: {torch.cuda.get_device_name(device)}, {dtype}")
    n_targets = len(base.target_shapes())
    print(f"- UNet {'small SD-shaped' if q else 'SD-1.5 config'} (random weights), {n_targets} K/V targets, "
          f"{sum(o * i for o, i in base.target_shapes().values()):,} weights; built in {time.perf_counter() - t0:.1f} s\n")
    if "swap" in parts:
        t1 = time.perf_counter()
        print("### 1. Swap round trip (ms, median of %d)\n" % args.reps)
        print(markdown_table(["tenant delta", "apply", "restore", "round trip", "base bit-identical after"],
                             swap_table(base, device, max(args.reps, 3), gen)))
        print(f"\n(part 1: {time.perf_counter() - t1:.0f} s)")
    if "batch" in parts:
        t1 = time.perf_counter()
        tenants = make_tenants(base, TENANTS if not q else 16, device, dtype, gen)
        print(f"\n### 2. Batches: {len(tenants)} tenants with {DENSITY:.0%} deltas, {args.size} px, {args.steps} steps, "
              f"guidance 7.5 (images/s, median of {args.reps})\n")
        rows, head = batch_table(base, tenants, args, device)
        print(markdown_table(["batch", "tenants in the mixed batch", "mixed", "single-tenant batch", "swap path, one at a time",
                              "mixed / single-tenant", "mixed / swap"], rows))
        if head:
            ok = head["vs_single"] >= 0.9 and head["vs_swap"] >= 3
            print(f"\nHeadline, batch of 8 with 8 tenants: {head['vs_single']:.2f}x a single-tenant batch (target >= 0.9x), "
                  f"{head['vs_swap']:.2f}x the swap path (target >= 3x): {'met' if ok else 'not met'}"
                  + (" (CPU run: the targets are for a GPU)" if q else ""))
        print(f"\n(part 2: {time.perf_counter() - t1:.0f} s)")
    if "learn" in parts:
        t1 = time.perf_counter()
        print(f"\n### 3. Learner step at {args.learn_size} px, batch 1 (ms, median of {args.learn_steps})\n")
        print(markdown_table(["method", "trainable", "step ms", "vs LoRA", "Adam state"], learner_table(base, args, device)))
        print(f"\n(part 3: {time.perf_counter() - t1:.0f} s)")
    print(f"\nTotal {time.perf_counter() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
