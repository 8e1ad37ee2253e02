"""Bytes per concept on disk for SD-1.5's 32 K/V layers (19.2 M weights; ``--base tiny``: the shipped base's own):
Cones (indices only), CNS (indices + fp16 values + a token), and a rank-4 LoRA on the same layers (fp16 A and B), at
a few densities. Exact file sizes from the
store's own encoders; random index sets (a learned set is no easier to code than a random one of its density)."""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import SD15_UNET_CONFIG
from benchmarks.sd_shaped import target_shapes_meta
from cns_ray.delta import LayerDelta, SparseDelta
from cns_ray.store import ConceptRecord, codec


def sizes(shapes: dict[str, tuple[int, int]], density: float, seed: int = 0) -> dict[str, float]:
    token_dim = next(iter(shapes.values()))[1]  # K/V input width = the text embedding width (768 for SD-1.5)
    g = torch.Generator().manual_seed(seed)
    neurons = {}
    for n, (o, i) in shapes.items():
        neurons[n] = torch.randperm(o * i, generator=g)[: int(o * i * density)].sort().values
    nnz = sum(int(x.numel()) for x in neurons.values())
    cones = ConceptRecord("kit", "<kit>", "cat", neurons, method="cones", shapes=dict(shapes))
    cones_b = len(codec.encode_cones([cones]))
    delta = SparseDelta("b", dict(shapes), {n: LayerDelta(i, torch.randn(i.numel(), generator=g) * 1e-2) for n, i in neurons.items()})
    cns_rec = ConceptRecord("rex", "<rex>", "dog", neurons)
    cns_b = len(codec.encode_delta(delta)) + len(codec.encode_concepts([cns_rec])) + token_dim * 4  # + its token
    lora_b = sum(4 * (o + i) * 2 for o, i in shapes.values())
    return {"density": density, "nnz": nnz, "cones": cones_b, "cones_per_index": cones_b / nnz, "cns": cns_b,
            "lora4": lora_b}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--densities", default="0.001,0.002,0.005,0.01,0.05")
    p.add_argument("--base", default="sd15", help="sd15 (SD-1.5's K/V shapes, no weights built) or a base model spec "
                   "(e.g. tiny: the shipped base's own target layers)")
    args = p.parse_args()
    if args.base == "sd15":
        shapes = target_shapes_meta(SD15_UNET_CONFIG)
    else:
        from cns_ray.models import load_base_model

        shapes = {n: tuple(s) for n, s in load_base_model(args.base).target_shapes().items()}
    print(f"{len(shapes)} layers, {sum(o * i for o, i in shapes.values())} weights")
    print("| density | indices | Cones bytes (B/index) | CNS bytes (indices + fp16 values + token) | rank-4 LoRA fp16 |")
    print("|---|---|---|---|---|")
    for d in (float(x) for x in args.densities.split(",")):
        r = sizes(shapes, d)
        print(f"| {d:.1%} | {r['nnz']:,} | {r['cones']:,} ({r['cones_per_index']:.2f}) | {r['cns']:,} | {r['lora4']:,} |")


if __name__ == "__main__":
    main()
