"""Which files of a diffusers folder a pipeline load needs, and which weight variant it holds (pure: names in,
names out; used for local folders and for what the ``s3://`` cache copies).

A Stable Diffusion download carries more than a load reads: a single-file ``.ckpt``/``.safetensors`` at the top,
``.bin`` copies next to ``.safetensors``, ``fp16`` and ``non_ema`` variants, Flax/ONNX/TF weights. Per component
folder (``unet/``, ``text_encoder/``, ...) one weight format of one variant is kept: the asked variant if present,
else the plain weights; ``.safetensors`` (and its shard index) over ``.bin``.

A folder whose components hold only variant weights (e.g. only ``*.fp16.safetensors``) needs ``variant="fp16"`` in
diffusers: :func:`detect_variant` finds it.
"""

from __future__ import annotations

import re
from collections import defaultdict

from cns_ray.errors import ModelLoadError

_WEIGHT = re.compile(
    r"^(?P<stem>[^./]+?)(?P<shard>-\d{5}-of-\d{5})?(?:\.(?P<variant>[A-Za-z0-9_]+))?"
    r"\.(?P<ext>safetensors|bin|ckpt|pt|pth|msgpack|h5|onnx|pb)(?P<index>\.index\.json)?$"
)
LOADABLE = ("safetensors", "bin")
"""Weight formats a torch diffusers/transformers load reads, in order of preference."""


def _weight(name: str):
    m = _WEIGHT.match(name)
    if m is None or (m["index"] and m["ext"] not in LOADABLE):
        return None
    return m


def _components(paths: list[str]) -> dict[str, list[str]]:
    """folder ("" = the top level) -> file names in it."""
    out: dict[str, list[str]] = defaultdict(list)
    for p in paths:
        folder, _, name = p.rpartition("/")
        out[folder].append(name)
    return out


def variants_by_component(paths: list[str]) -> dict[str, set[str | None]]:
    """component folder -> the variants its loadable weights come in (None = plain)."""
    out: dict[str, set[str | None]] = {}
    for folder, names in _components(paths).items():
        if not folder or "/" in folder:
            continue
        found = {m["variant"] for n in names if (m := _weight(n)) and m["ext"] in LOADABLE}
        if found:
            out[folder] = found
    return out


def detect_variant(paths: list[str], where: str) -> str | None:
    """The variant to load with: None when every component has plain weights; else the one variant that the
    components lacking plain weights all have (e.g. ``fp16``)."""
    lacking = {c: v for c, v in variants_by_component(paths).items() if None not in v}
    if not lacking:
        return None
    common = set.intersection(*(set(v) for v in lacking.values()))
    if len(common) == 1:
        return common.pop()
    detail = "; ".join(f"{c}/: {sorted(v)}" for c, v in sorted(lacking.items()))
    raise ModelLoadError(
        f"{where} has components without plain weights and no single variant they all share ({detail}): "
        "give the variant to load (variant=..., e.g. 'fp16'), or save the folder with save_pretrained"
    )


def needed_files(paths: list[str], variant: str | None = None) -> list[str]:
    """The subset of ``paths`` (relative, ``/``-separated) a diffusers load of ``variant`` reads."""
    keep: list[str] = []
    for folder, names in _components(paths).items():
        if "/" in folder:
            keep += [f"{folder}/{n}" for n in names if _weight(n) is None]  # e.g. tokenizer sub-folders
            continue
        if not folder:  # top level: model_index.json, cns_defaults.json, prompts; never single-file checkpoints
            keep += [n for n in names if _WEIGHT.match(n) is None]
            continue
        weights = [(n, m) for n in names if (m := _weight(n))]
        keep += [f"{folder}/{n}" for n in names if _WEIGHT.match(n) is None]
        loadable = [(n, m) for n, m in weights if m["ext"] in LOADABLE]
        for want in ([variant, None] if variant else [None]):
            chosen = next(
                (ext for ext in LOADABLE if any(m["ext"] == ext and m["variant"] == want for _, m in loadable)), None
            )
            if chosen is not None:
                keep += [f"{folder}/{n}" for n, m in loadable if m["ext"] == chosen and m["variant"] == want]
                break
    return sorted(keep)
