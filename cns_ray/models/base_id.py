"""``base_id``: the fingerprint that ties a learned state to the base model it was learned on.

It hashes what a delta depends on, and nothing an installed library may add:

- the CNS target layers: their stable names, ``[out, in]`` shapes and weights (cast to float16, so one checkpoint
  loaded in fp16 or fp32 gets one id);
- the UNet config keys that fix its block layout and attention shapes (:data:`SHAPE_KEYS`), keys every diffusers
  release since the first UNet2DConditionModel has had. ``None`` values are left out.

Not hashed: every other config key. A diffusers upgrade that adds a config key with a default (or a training-only
flag) would otherwise make every stored state "learned on another base".
"""

from __future__ import annotations

import hashlib
import json

import torch

from cns_ray.targets import find_target_modules

SHAPE_KEYS = (
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "attention_head_dim",
)
"""UNet config keys in the fingerprint: the block layout and the attention shapes."""
FORMAT = "cns-base-id/2"
"""Changes whenever what is hashed changes (version 1 hashed every public config key)."""


def shape_config(unet) -> dict:
    """The fingerprinted part of ``unet.config``: :data:`SHAPE_KEYS` with non-None values, lists as lists."""
    cfg = dict(unet.config)
    return {k: list(v) if isinstance(v, tuple) else v for k in SHAPE_KEYS if (v := cfg.get(k)) is not None}


def compute_base_id(unet) -> str:
    """sha256 (first 16 hex) of :func:`shape_config` and the target layers' names, shapes and float16 weights."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(json.dumps(shape_config(unet), sort_keys=True).encode())
    for name, mod in find_target_modules(unet).items():
        w = mod.weight.detach()
        h.update(f"{name}:{tuple(w.shape)}".encode())
        h.update(w.to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
