"""K/V preservation's cost per learning step: the shipped dense ``dW @ G`` vs. a sparse factored form.

``LearnerConfig.preserve_lambda`` adds ``sum_n ||dW_n C^T||^2 / M`` over the K/V layers (C: the preserved prompts'
text rows). :func:`cns_ray.learn.regularizer.kv_preservation` builds every layer's dense ``dW [out, in]`` and
multiplies it by the ``[in, in]`` Gram (``out x in x in`` multiply-adds). The alternative timed here multiplies only
the nonzeros, as a sparse matrix, by the Gram's factor ``L [in, r]`` (``L L^T = G``; ``nnz x r``). Both give the same
value (checked here). Timed: forward + backward of the term, on SD-1.5's 32 K/V layer shapes (from the UNet config
on the meta device) and on the shipped ``tiny``'s, one CPU thread by default.

    .venv/bin/python -m benchmarks.bench_kv_preservation [--ratio 0.01] [--prompts 20] [--n 5]

``--ratio``: the fraction of each layer's entries a concept selects; ``--prompts``: preserved prompts (x 77 rows at
SD scale, 48 on tiny).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import SD15_UNET_CONFIG, environment_lines, fmt_ms, markdown_table, median_ms, time_calls
from cns_ray.learn.regularizer import kv_preservation, text_gram


def gram_factor(gram: torch.Tensor, rel_tol: float = 1e-6) -> torch.Tensor:
    """``L [D, r]`` with ``L L^T = G`` (eigenvectors scaled by the square roots of the eigenvalues kept)."""
    evals, evecs = torch.linalg.eigh(gram.double())
    keep = evals > rel_tol * float(evals[-1])
    return (evecs[:, keep] * evals[keep].sqrt()).float()  # [D, r]


def sparse_factored(values, start, indices, shapes, factor) -> torch.Tensor:
    """``sum_n ||S_n @ L||^2 / sum(out)`` with ``S_n`` the sparse ``dW_n``."""
    total, outs = 0.0, 0
    for name, v in values.items():
        o, i = shapes[name]
        idx = indices[name]
        s = torch.sparse_coo_tensor(torch.stack([idx // i, idx % i]), v - start[name], (o, i), check_invariants=False)
        total = total + torch.sparse.mm(s, factor).pow(2).sum()
        outs += o
    return total / outs


def layer_shapes(which: str) -> dict[str, tuple[int, int]]:
    from diffusers import UNet2DConditionModel

    from cns_ray.targets import target_specs

    if which == "sd15":
        with torch.device("meta"):
            unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    else:
        from cns_ray.models import load_base_model

        unet = load_base_model("tiny").unet
    return {n: (t.out_features, t.in_features) for n, t in target_specs(unet).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for which, tokens in (("tiny", 48), ("sd15", 77)):
        shapes = layer_shapes(which)
        width = next(iter(shapes.values()))[1]
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(args.prompts, tokens, width, generator=gen)  # [P, T, D]
        gram = text_gram(hidden)
        factor = gram_factor(gram)
        indices, start, values = {}, {}, {}
        for name, (o, i) in shapes.items():
            nnz = max(1, int(args.ratio * o * i))
            indices[name] = torch.randperm(o * i, generator=gen)[:nnz].sort().values
            start[name] = torch.randn(nnz, generator=gen)
            values[name] = (start[name] + 0.01 * torch.randn(nnz, generator=gen)).requires_grad_(True)
        a = float(sparse_factored(values, start, indices, shapes, factor))
        b = float(kv_preservation(values, start, indices, shapes, gram))
        assert abs(a - b) <= 1e-4 * max(abs(b), 1e-12), (a, b)

        def run(fn, g):
            def call():
                for v in values.values():
                    v.grad = None
                fn(values, start, indices, shapes, g).backward()
            return call

        t_sparse = median_ms(time_calls(run(sparse_factored, factor), args.n))
        t_dense = median_ms(time_calls(run(kv_preservation, gram), args.n))
        nnz = sum(v.numel() for v in values.values())
        flops_dense = sum(o * i * i for o, i in shapes.values())
        rows.append([which, len(shapes), f"{nnz:,}", f"{width} x {factor.shape[1]}", fmt_ms(t_dense), fmt_ms(t_sparse),
                     f"{t_dense / t_sparse:.1f}x", f"{flops_dense / 1e9:.1f} / {nnz * factor.shape[1] / 1e9:.3f}"])
    print("\n".join(environment_lines()))
    print(f"ratio {args.ratio}, {args.prompts} preserved prompts; forward + backward, median of {args.n}\n")
    print(markdown_table(["base", "K/V layers", "selected entries", "factor L", "dense dW @ G (shipped), ms", "sparse S @ L, ms",
                          "sparse speed-up", "GMAC dense / sparse"], rows))


if __name__ == "__main__":
    main()
