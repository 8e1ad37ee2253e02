"""Shared helpers for the benchmark scripts: offline environment, model configs, timing, markdown tables.

Benchmarks are run by hand (``python -m benchmarks.bench_swap``) and print markdown; they are not tests.
"""

from __future__ import annotations

import os

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

import datetime  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import torch  # noqa: E402

from cns_ray.models.base import TINY_RANDOM  # noqa: E402

BENCH_BASE_MODEL = TINY_RANDOM
"""The small base model of the benchmarks' "tiny" rows: ``tiny-random`` (random weights built offline, 64 px,
32x32x4 latents, cross_attention_dim 32), pinned because the tables in benchmarks/README.md were measured on it
(it was the default ``tiny`` then). The shipped default ``tiny`` is another model (trained, 32 px, 8x8x48
latents, cross_attention_dim 128): its numbers would differ."""

# The UNet config of Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, unet/config.json), written out so
# the benchmark builds the real shapes offline (random weights).
SD15_UNET_CONFIG: dict = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_TARGET_LAYERS = 32
SD15_TARGET_WEIGHTS = 19_169_280

# A reduced SD-shaped UNet for `--quick` smoke runs: two resolution levels, one layer per block, same widths.
QUICK_UNET_CONFIG: dict = {
    **SD15_UNET_CONFIG,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640),
    "layers_per_block": 1,
}


def build_unet(config: dict, seed: int = 0):
    """A ``UNet2DConditionModel`` with random weights (fp32, CPU), deterministic for ``seed``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config)
    return unet.eval().requires_grad_(False)


def environment_lines() -> list[str]:
    """Markdown bullet lines describing where the numbers were taken."""
    import diffusers

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import peft

        peft_v = peft.__version__
    except ImportError:
        peft_v = "not installed"
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, host: {socket.gethostname()}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {torch.get_num_threads()}",
        f"- python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, peft {peft_v}",
    ]


def time_calls(fn: Callable[[], object], n: int, warmup: int = 2) -> list[float]:
    """Wall-clock seconds of ``n`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e3


def p90_ms(samples: Sequence[float]) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))] * 1e3


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
