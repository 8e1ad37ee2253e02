"""Per-request tenant swap on an SD-1.5-shaped UNet: CNS sparse delta vs. a diffusers user's rank-4 LoRA.

    nice -n 10 .venv/bin/python -m benchmarks.bench_swap            # full SD-1.5 shapes (~4 GiB, a few minutes)
    .venv/bin/python -m benchmarks.bench_swap --quick               # reduced UNet, smoke check (~1 minute)

Builds a UNet2DConditionModel from the SD-1.5 config (random fp32 weights), then in one process:
- CNS: ``cns_ray.delta.apply_`` / ``restore_`` of a random tenant delta at 0.1%, 1%, 5% of the K/V weights;
- LoRA (peft, rank 4, the same 32 attn2.to_k/to_v layers): ``load_lora_adapter(..., hotswap=True)`` from a
  saved file and from an in-memory state dict, ``set_adapters`` between two resident adapters, and
  ``unfuse_lora`` + ``fuse_lora``;
- whether the base weights are bit-identical to the original after N swaps (max |diff| where not);
- stored bytes: the CNS delta as delta.parquet vs. the LoRA as safetensors fp16.
Prints markdown. Timings are medians over N swaps (wall clock, CPU, shared machine: expect noise).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks.common import (
    QUICK_UNET_CONFIG,
    SD15_TARGET_LAYERS,
    SD15_TARGET_WEIGHTS,
    SD15_UNET_CONFIG,
    build_unet,
    environment_lines,
    fmt_bytes,
    fmt_ms,
    markdown_table,
    median_ms,
    p90_ms,
    time_calls,
)
from cns_ray.delta import LayerDelta, SparseDelta, apply_, restore_
from cns_ray.targets import target_specs, target_weights, total_target_weights

FRACTIONS = (0.001, 0.01, 0.05)
LORA_RANK = 4
LORA_FILE = "pytorch_lora_weights.safetensors"


# ------------------------------------------------------------------ inputs
def random_delta(specs, frac: float, gen: torch.Generator) -> SparseDelta:
    """A tenant delta with ``frac`` of every layer's entries: sorted unique random indices, fp16 values."""
    layers, shapes = {}, {}
    for name, t in specs.items():
        k = max(1, round(frac * t.numel))
        idx = torch.randperm(t.numel, generator=gen)[:k].sort().values  # [k] int64, sorted, unique
        val = (torch.randn(k, generator=gen) * 1e-3).to(torch.float16)  # [k]
        layers[name], shapes[name] = LayerDelta(idx, val), t.shape
    return SparseDelta(base_id="bench", shapes=shapes, layers=layers)


def random_lora_state(specs, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A trained-looking rank-``rank`` LoRA on the targets, in peft's key format, fp16."""
    sd = {}
    for name, t in specs.items():
        sd[f"{name}.lora_A.weight"] = (torch.randn(rank, t.in_features, generator=gen) / math.sqrt(t.in_features)).half()  # [r, in]
        sd[f"{name}.lora_B.weight"] = (torch.randn(t.out_features, rank, generator=gen) * 1e-2).half()  # [out, r]
    return sd


def save_lora(folder: Path, sd: dict[str, torch.Tensor], names: list[str]) -> Path:
    """Save the way a diffusers user does: ``save_lora_weights`` -> safetensors with the peft config."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig

    cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=names)
    StableDiffusionLoraLoaderMixin.save_lora_weights(folder, unet_lora_layers=sd, unet_lora_adapter_metadata=cfg.to_dict())
    return folder / LORA_FILE


# ------------------------------------------------------------------ checks
def base_weights(unet, names) -> dict[str, torch.Tensor]:
    """The live base weight of each target, also when peft has wrapped the module (``.base_layer``)."""
    out = {}
    for n in names:
        m = unet.get_submodule(n)
        out[n] = (m.base_layer if hasattr(m, "base_layer") else m).weight
    return out


def identity(weights, orig) -> tuple[bool, float]:
    """(bit-identical to ``orig``, max |diff|) over all targets."""
    same = all(torch.equal(weights[n], orig[n]) for n in orig)
    diff = max(float((weights[n].detach().double() - orig[n].double()).abs().max()) for n in orig)
    return same, diff


def fmt_identity(same: bool, diff: float) -> str:
    return "yes (bit-identical)" if same else f"no: max abs diff {diff:.2e}"


# ------------------------------------------------------------------ CNS
def bench_cns(unet, specs, orig, n_swaps: int, gen) -> tuple[list[list], dict[float, SparseDelta]]:
    weights = target_weights(unet)
    rows, deltas = [], {}
    for frac in FRACTIONS:
        delta = random_delta(specs, frac, gen)
        deltas[frac] = delta
        originals = apply_(weights, delta)  # correctness once: applied == base + delta, computed independently
        expect = delta.applied_to(orig)
        assert all(torch.equal(weights[n], expect[n]) for n in delta.layers), "apply_ gave wrong weights"
        restore_(weights, originals)
        t_apply, t_restore = [], []
        for i in range(n_swaps + 2):
            t0 = time.perf_counter()
            originals = apply_(weights, delta)
            t1 = time.perf_counter()
            restore_(weights, originals)
            t2 = time.perf_counter()
            if i >= 2:  # warm-up
                t_apply.append(t1 - t0)
                t_restore.append(t2 - t1)
        shapes = {n: tuple(w.shape) for n, w in weights.items()}
        t_validate = time_calls(lambda: delta.validate(shapes), n_swaps)  # the part of apply_ that checks the delta
        both = [a + r for a, r in zip(t_apply, t_restore)]
        same, diff = identity(weights, orig)
        assert same, f"CNS restore is not bit-exact at {frac:.1%}: max diff {diff}"
        rows.append([
            f"CNS sparse swap, {frac:.1%} of K/V ({delta.nnz:,} entries)",
            f"{fmt_ms(median_ms(t_apply))} (validate {fmt_ms(median_ms(t_validate))})",
            fmt_ms(median_ms(t_restore)), f"{fmt_ms(median_ms(both))} (p90 {fmt_ms(p90_ms(both))})",
            fmt_identity(same, diff),
        ])
        del delta, originals
    return rows, deltas


# ------------------------------------------------------------------ LoRA
def bench_lora(unet, specs, orig, n_swaps: int, gen, tmp: Path) -> tuple[list[list], dict]:
    """The diffusers/peft ways to switch a rank-4 LoRA; every method is tried, failures become table rows."""
    from diffusers.utils.state_dict_utils import _load_sft_state_dict_metadata
    from safetensors.torch import load_file

    names = list(specs)
    files = []
    for tag in ("a", "b"):
        files.append(save_lora(tmp / f"lora_{tag}", random_lora_state(specs, LORA_RANK, gen), names))
    extra = {"lora_file_bytes": files[0].stat().st_size,
             "lora_params": sum(LORA_RANK * (t.in_features + t.out_features) for t in specs.values())}
    rows: list[list] = []

    def load(i: int, adapter: str, **kw):
        unet.load_lora_adapter(str(files[i].parent), prefix="unet", adapter_name=adapter, weight_name=LORA_FILE, **kw)

    def row(label, samples=None, error=None, note=""):
        bw = base_weights(unet, names)
        same, diff = identity(bw, orig)
        if error is not None:
            rows.append([label, "-", "-", f"FAILED: {error}", fmt_identity(same, diff)])
        else:
            rows.append([label + note, "-", "-", f"{fmt_ms(median_ms(samples))} (p90 {fmt_ms(p90_ms(samples))})",
                         fmt_identity(same, diff)])

    def attempt(label, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a failing method is a result, recorded in the table
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(f"[{label}] failed:\n{traceback.format_exc()}", file=sys.stderr)
            row(label, error=msg)

    # first (cold) load of adapter "t0": what the first request of a tenant pays
    def cold():
        t0 = time.perf_counter()
        load(0, "t0")
        extra["cold_load_ms"] = (time.perf_counter() - t0) * 1e3
    attempt("LoRA first load_lora_adapter (cold, file)", cold)

    # (a) hotswap from a saved file, alternating two adapters into the slot "t0"
    def hotswap_file():
        k = iter(range(10**9))
        row("LoRA load_lora_adapter(file, hotswap=True)", time_calls(lambda: load(1 - next(k) % 2, "t0", hotswap=True), n_swaps))
    attempt("LoRA load_lora_adapter(file, hotswap=True)", hotswap_file)

    # (a') hotswap from a state dict already in memory (no file read)
    def hotswap_dict():
        sds = [load_file(str(f)) for f in files]
        metas = [_load_sft_state_dict_metadata(str(f)) for f in files]
        k = iter(range(10**9))

        def swap():
            i = 1 - next(k) % 2
            unet.load_lora_adapter(dict(sds[i]), prefix="unet", adapter_name="t0", hotswap=True, metadata=metas[i])
        row("LoRA load_lora_adapter(state dict, hotswap=True)", time_calls(swap, n_swaps))
    attempt("LoRA load_lora_adapter(state dict, hotswap=True)", hotswap_dict)

    # (b) set_adapters between two resident adapters
    def set_adapters():
        load(1, "t1")
        k = iter(range(10**9))
        row("LoRA set_adapters (2 resident adapters)", time_calls(lambda: unet.set_adapters(["t0", "t1"][next(k) % 2]), n_swaps))
    attempt("LoRA set_adapters (2 resident adapters)", set_adapters)

    # (c) fused: unfuse the current adapter, fuse the next one into the base weights
    def fuse():
        unet.fuse_lora(adapter_names=["t0"])
        k = iter(range(10**9))

        def swap():
            unet.unfuse_lora()
            unet.fuse_lora(adapter_names=[["t1", "t0"][next(k) % 2]])
        samples = time_calls(swap, n_swaps)
        unet.unfuse_lora()
        row("LoRA unfuse_lora + fuse_lora", samples, note=f" (after {n_swaps + 2} swaps + final unfuse)")
    attempt("LoRA unfuse_lora + fuse_lora", fuse)

    # the price of unfused LoRA (hotswap, set_adapters): every K/V projection runs the adapter too, at every step
    def forward_overhead():
        x = torch.randn(2, 77, next(iter(specs.values())).in_features)  # [cfg batch, tokens, in]
        mods = [unet.get_submodule(n) for n in names]

        def kv():
            with torch.no_grad():
                for m in mods:
                    m(x)
        on, off = [], []
        for _ in range(n_swaps):  # interleaved, so load changes on the machine hit both alike
            on += time_calls(kv, 1, warmup=1)
            unet.disable_lora()
            off += time_calls(kv, 1, warmup=1)
            unet.enable_lora()
        extra["kv_ms"] = (min(off) * 1e3, min(on) * 1e3)  # min: least disturbed by other load (a micro-timing)
    attempt("LoRA forward overhead", forward_overhead)
    return rows, extra


# ------------------------------------------------------------------ storage
def entropy_bits(x) -> float:
    """Empirical order-0 entropy of the symbols in ``x``, bits per symbol."""
    import numpy as np

    _, c = np.unique(x, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def delta_entropy_bytes(delta: SparseDelta) -> tuple[float, float, float]:
    """(value entropy bits, index-gap entropy bits, floor in bytes per entry) of ``delta`` as fp16 values and
    per-layer gaps ``idx[i] - idx[i-1] - 1``: what an entropy coder of values and gaps would need, footer aside."""
    import numpy as np

    vals = np.concatenate([d.value.to(torch.float16).numpy().view(np.uint16) for d in delta.layers.values()])
    gaps = np.concatenate([np.diff(d.index.numpy(), prepend=-1) - 1 for d in delta.layers.values()])
    hv, hg = entropy_bits(vals), entropy_bits(gaps)
    return hv, hg, (hv + hg) / 8


def schema1_bytes(delta: SparseDelta) -> int:
    """Size of the same delta as the schema-1 codec wrote it (Arrow schema embedded, shapes/counts JSON twice,
    statistics): the before of the codec change, measured in the same run."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(delta.layers)
    codes = np.concatenate([np.full(delta.layers[n].nnz, i, np.int32) for i, n in enumerate(names)])
    table = pa.table({
        "layer": pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names)),
        "index": pa.array(np.concatenate([delta.layers[n].index.numpy().astype(np.uint32) for n in names])),
        "value": pa.array(np.concatenate([delta.layers[n].value.half().numpy() for n in names]), pa.float16()),
    })
    meta = {"kind": "delta", "schema_version": "1", "base_id": delta.base_id, "value_dtype": "float16",
            "shapes": json.dumps({n: list(s) for n, s in sorted(delta.shapes.items())}),
            "counts": json.dumps({n: delta.layers[n].nnz for n in names})}
    table = table.replace_schema_metadata({f"cns.{k}".encode(): v.encode() for k, v in meta.items()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=["layer"], column_encoding={"index": "DELTA_BINARY_PACKED"})
    return sink.getvalue().size


def lora_raw_bytes(specs, rank: int = LORA_RANK) -> tuple[int, int]:
    """(bytes, params) of a rank-``rank`` LoRA on the targets as bare fp16 A and B matrices: a lower bound of its
    safetensors file (used when peft is not installed to save a real one)."""
    params = sum(rank * (t.in_features + t.out_features) for t in specs.values())
    return 2 * params, params


def storage_rows(deltas: dict[float, SparseDelta], lora: dict, specs) -> list[list]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cns_ray.store.codec import decode_delta, encode_delta

    if "lora_file_bytes" in lora:
        lora_b, lora_p, lora_what = lora["lora_file_bytes"], lora["lora_params"], "safetensors fp16 (save_lora_weights)"
    else:
        (lora_b, lora_p), lora_what = lora_raw_bytes(specs), "bare fp16 A+B (peft absent: no file header)"
    rows = []
    for frac, d in deltas.items():
        data = encode_delta(d, "float16")
        decoded = decode_delta(data)
        exact = encode_delta(decoded, "float16") == data and all(
            torch.equal(decoded.layers[n].index, x.index) and torch.equal(decoded.layers[n].value.view(torch.int16), x.value.half().view(torch.int16))
            for n, x in d.layers.items())
        hv, hg, floor = delta_entropy_bytes(d)
        n, old = len(data), schema1_bytes(d)
        footer = pq.read_metadata(pa.BufferReader(data)).serialized_size
        rows.append([f"CNS delta.parquet, {frac:.1%} of K/V", f"{d.nnz:,}", fmt_bytes(n), f"{n / d.nnz:.2f}",
                     f"{hv:.2f} + {hg:.2f} = {floor:.2f}", f"{n / d.nnz / floor:.3f}x",
                     f"{n / d.nnz / ((16 + hg) / 8):.3f}x", f"{footer:,}", f"{old / d.nnz:.2f} ({fmt_bytes(old)})",
                     f"{n / lora_b:.2f}x", "yes" if exact else "NO"])
    rows.append([f"LoRA rank {LORA_RANK}, {lora_what}", f"{lora_p:,}", fmt_bytes(lora_b), f"{lora_b / lora_p:.2f}",
                 "-", "-", "-", "-", "-", "1.00x", "-"])
    return rows


STORAGE_HEADER = ["what", "entries / params", "bytes", "B per entry", "entropy: value + gap bits = B/entry floor",
                  "vs floor", "vs 16-bit values + gap entropy", "footer (B)", "schema 1 (before): B/entry",
                  "vs LoRA bytes", "round trip byte-exact"]


def main_bytes(args) -> int:
    """``--bytes``: the storage table only, on SD-1.5's target shapes from a meta-device UNet (seconds, no 4 GiB)."""
    from types import SimpleNamespace

    from benchmarks.sd_shaped import target_shapes_meta

    shapes = target_shapes_meta(QUICK_UNET_CONFIG if args.quick else SD15_UNET_CONFIG)
    specs = {n: SimpleNamespace(numel=o * i, shape=(o, i), out_features=o, in_features=i) for n, (o, i) in shapes.items()}
    gen = torch.Generator().manual_seed(args.seed)
    deltas = {f: random_delta(specs, f, gen) for f in FRACTIONS}
    print("## Stored bytes per concept: CNS delta.parquet vs rank-4 LoRA" + (" (--quick)" if args.quick else ""))
    print("\n".join(environment_lines()))
    print(f"- {len(specs)} target layers, {sum(t.numel for t in specs.values()):,} weights; random sorted indices, "
          "N(0, 1e-3) fp16 values\n")
    print(markdown_table(STORAGE_HEADER, storage_rows(deltas, {}, specs)))
    return 0


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced UNet (2 levels) and 10 swaps: a smoke check")
    ap.add_argument("--swaps", type=int, default=None, help="timed swaps per method (default 50, 10 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bytes", action="store_true", help="only the stored-bytes table (SD-1.5 shapes, no UNet: seconds)")
    args = ap.parse_args(argv)
    if args.bytes:
        return main_bytes(args)
    n_swaps = args.swaps or (10 if args.quick else 50)
    config = QUICK_UNET_CONFIG if args.quick else SD15_UNET_CONFIG

    print("## Swap benchmark: CNS sparse delta vs. rank-4 LoRA" + (" (--quick: reduced UNet)" if args.quick else ""))
    print("\n".join(environment_lines()))
    t0 = time.perf_counter()
    unet = build_unet(config, args.seed)
    specs = target_specs(unet)
    total = total_target_weights(specs)
    if not args.quick:
        assert len(specs) == SD15_TARGET_LAYERS and total == SD15_TARGET_WEIGHTS, (len(specs), total)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"- UNet: {'reduced SD-shaped' if args.quick else 'SD-1.5 config'}, {n_params / 1e6:.0f} M params, fp32, "
          f"built in {time.perf_counter() - t0:.1f} s; targets: {len(specs)} layers, {total:,} weights; "
          f"{n_swaps} timed swaps per method (+2 warm-up)\n")

    gen = torch.Generator().manual_seed(args.seed)
    orig = {n: w.detach().clone() for n, w in target_weights(unet).items()}
    cns_rows, deltas = bench_cns(unet, specs, orig, n_swaps, gen)
    with tempfile.TemporaryDirectory(prefix="cns-bench-") as tmp:
        lora_rows, lora = bench_lora(unet, specs, orig, n_swaps, gen, Path(tmp))

    print("### Swap time (ms, median) and base weights after the swaps\n")
    print(markdown_table(["method", "apply", "restore", "swap total (apply+restore / one switch)", "base weights after"],
                         cns_rows + lora_rows))
    if "cold_load_ms" in lora:
        print(f"\nFirst (cold) `load_lora_adapter` of a tenant's LoRA file: {fmt_ms(lora['cold_load_ms'])} ms.")
    if "kv_ms" in lora:
        off, on = lora["kv_ms"]
        print(f"Unfused LoRA also costs at every denoising step: the {len(specs)} K/V projections of a 2x77-token "
              f"text batch take {fmt_ms(on)} ms with the adapter active vs {fmt_ms(off)} ms without (min of {n_swaps}) "
              f"(+{fmt_ms(on - off)} ms per step); a CNS swap or a fused LoRA adds nothing per step.")

    print("\n### Ratios (LoRA switch time / CNS apply+restore time, same run)\n")
    cns_ms = {frac: float(r[3].split()[0]) for frac, r in zip(FRACTIONS, cns_rows)}
    ratio_rows = []
    for r in lora_rows:
        if r[3].startswith("FAILED"):
            ratio_rows.append([r[0], "failed", "failed", "failed"])
            continue
        ms = float(r[3].split()[0])
        ratio_rows.append([r[0]] + [f"{ms / cns_ms[f]:.1f}x" if ms >= cns_ms[f] else f"{ms / cns_ms[f]:.2f}x" for f in FRACTIONS])
    print(markdown_table(["LoRA method"] + [f"vs CNS {f:.1%}" for f in FRACTIONS], ratio_rows))

    print("\n### Stored bytes per concept (CNS delta written with cns_ray.store.codec.encode_delta, fp16)\n")
    print(markdown_table(STORAGE_HEADER, storage_rows(deltas, lora, specs)))
    print(f"\nTotal {time.perf_counter() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
