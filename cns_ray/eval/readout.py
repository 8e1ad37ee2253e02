"""A per-object attribute readout for the toy world v2: a small supervised CNN that reads, from a 32x32 image, what
each object slot holds.

Slots: ``object`` (the one object of a one-object scene), ``left`` and ``right`` (the two objects of a two-object
scene). Per slot it reads the class and the look (body colour, pattern, second colour, marking, marking colour;
``none`` where the look has no second colour / no marking); for the ``object`` slot also its size and position;
per scene the object count and the background. Every slot's heads are read whatever count the image shows: the
caller knows which prompt it drew (a one-object prompt -> ``object``, a two-object prompt -> ``left``/``right``).

Trained on rendered scenes that include held-out instances (a measuring tool, like CLIP that has seen dogs):
``python -m pipelines.train_readout``. Its accuracy on fresh rendered scenes is its ceiling, recorded in
``ceilings.json`` beside the weights.

    ro = load_readout()
    ro.read(images)                      # [{"count": 1, "background": "grey", "objects": [{"shape": ...}]}, ...]
    ro.instance_match(images, concept, "left")   # InstanceMatch(attributes=0.83, exact=0.5, ...)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cns_ray.errors import InputError, ModelLoadError
from cns_ray.world.scene import BACKGROUNDS, BODY_COLOURS, CLASSES, COLOURS, MARKINGS, PATTERNS, POSITIONS, SIZES, Look, Scene

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CEILINGS = "ceilings.json"
KIND = "toy-readout"

SLOTS = ("object", "left", "right")
"""``object``: the single object of a one-object scene; ``left`` / ``right``: the objects of a two-object scene."""
NONE = "none"
LOOK_ATTRS: dict[str, tuple[str, ...]] = {
    "shape": CLASSES,
    "colour": BODY_COLOURS,
    "pattern": PATTERNS,
    "colour2": (NONE, *COLOURS),
    "marking": MARKINGS,
    "marking_colour": (NONE, *COLOURS),
}
"""What makes an instance (class + look), read for every slot."""
PLACE_ATTRS: dict[str, tuple[str, ...]] = {"size": tuple(SIZES), "position": tuple(POSITIONS)}
"""Read for the ``object`` slot only (a two-object scene's objects are small, at the left and the right)."""
SCENE_ATTRS: dict[str, tuple[str, ...]] = {"count": ("1", "2"), "background": tuple(BACKGROUNDS)}


def heads() -> list[tuple[str, tuple[str, ...]]]:
    """Every output head, ``(name, values)``, in logit order; names are ``count``, ``background``, ``<slot>.<attr>``."""
    out = list(SCENE_ATTRS.items())
    for slot in SLOTS:
        attrs = {**LOOK_ATTRS, **(PLACE_ATTRS if slot == "object" else {})}
        out += [(f"{slot}.{a}", v) for a, v in attrs.items()]
    return out


def look_values(shape: str, look: Look) -> dict[str, str]:
    """The readout's values of an instance (class + look), ``none`` for an absent second colour / marking."""
    return {"shape": shape, "colour": look.colour, "pattern": look.pattern, "colour2": look.colour2 or NONE,
            "marking": look.marking, "marking_colour": look.marking_colour or NONE}


def scene_values(scene: Scene) -> dict[str, str]:
    """Ground truth of every head that applies to ``scene`` (the other slots' heads are absent)."""
    out = {"count": str(len(scene.objects)), "background": scene.background}
    slots = ("object",) if len(scene.objects) == 1 else ("left", "right")
    for slot, o in zip(slots, scene.objects):
        vals = look_values(o.shape, o.look)
        if slot == "object":
            vals.update(size=o.size, position=o.position)
        out.update({f"{slot}.{k}": v for k, v in vals.items()})
    return out


def scene_labels(scenes: list[Scene]) -> torch.Tensor:
    """Targets [N, heads] (value index per head; -1 where the head does not apply to the scene)."""
    table = heads()
    out = torch.full((len(scenes), len(table)), -1, dtype=torch.long)  # [N, H]
    for i, s in enumerate(scenes):
        vals = scene_values(s)
        for j, (name, values) in enumerate(table):
            if name in vals:
                out[i, j] = values.index(vals[name])
    return out


@dataclass(frozen=True)
class ReadoutConfig:
    """Shapes of the readout CNN."""

    resolution: int = 32
    """Input side in pixels (other sizes are resized to it)."""
    widths: tuple[int, ...] = (32, 64, 128, 128)
    """Channels per level; levels after the first halve the side (32 -> 16 -> 8 -> 4)."""
    hidden: int = 256
    """Width of the shared layer over the flattened (position-keeping) feature map."""

    def __post_init__(self) -> None:
        side = self.resolution // 2 ** (len(self.widths) - 1)
        if self.resolution < 8 or side * 2 ** (len(self.widths) - 1) != self.resolution:
            raise InputError(f"resolution={self.resolution} must be >= 8 and divisible by 2^{len(self.widths) - 1} "
                             f"(the {len(self.widths)} levels of widths={self.widths})")


class ReadoutNet(nn.Module):
    """Conv levels (GroupNorm: per-image statistics, no batch-statistics drift on generated images), then a
    flatten that keeps where things are (left vs right), a shared layer and one linear layer for every head."""

    def __init__(self, cfg: ReadoutConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(cfg.widths):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, c), nn.GELU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg.resolution // 2 ** (len(cfg.widths) - 1)
        self.sizes = [len(v) for _, v in heads()]
        self.shared = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.hidden), nn.GELU())
        self.out = nn.Linear(cfg.hidden, sum(self.sizes))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # x [B, 3, R, R] in [-1, 1]
        logits = self.out(self.shared(self.features(x)))  # [B, sum(values)]
        return list(torch.split(logits, self.sizes, dim=1))  # per head [B, values]


def readout_loss(logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Mean over heads of the cross-entropy on the scenes the head applies to (labels [B, H], -1 = not)."""
    losses = [F.cross_entropy(lg, labels[:, j], ignore_index=-1) for j, lg in enumerate(logits)
              if bool((labels[:, j] >= 0).any())]
    return torch.stack(losses).mean()


@dataclass
class InstanceMatch:
    """How well a slot of some images matches an instance (class + look)."""

    attributes: float
    """Mean over images of the fraction of the 6 instance attributes read right."""
    exact: float
    """Fraction of images whose slot reads as exactly the instance (all 6 right)."""
    per_attribute: dict[str, float] = field(default_factory=dict)
    """Per attribute, the fraction of images that read right."""
    n: int = 0


def _pixels(images, resolution: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.dtype.is_floating_point:
        x = images.float()
    else:
        arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise InputError(f"images of shape {arr.shape} dtype {arr.dtype}: expected uint8 [N, H, W, 3]")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"images of shape {tuple(x.shape)}: expected float [N, 3, H, W] in [-1, 1]")
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area" if x.shape[-1] > resolution else "bilinear")
    return x  # [N, 3, R, R]


class Readout:
    """The trained readout: ``read`` (values per image) and ``instance_match`` (a score against an instance)."""

    def __init__(self, net: ReadoutNet, ceilings: dict | None = None):
        self.net = net.eval().requires_grad_(False)
        self.ceilings = ceilings or {}

    @torch.no_grad()
    def probabilities(self, images, batch: int = 256) -> dict[str, np.ndarray]:
        """Per head name, probabilities [N, values] (uint8 [N, H, W, 3] or float [N, 3, H, W] in [-1, 1])."""
        x = _pixels(images, self.net.cfg.resolution)  # [N, 3, R, R]
        parts = [self.net(x[i : i + batch]) for i in range(0, len(x), batch)]
        return {name: torch.cat([p[j] for p in parts]).softmax(-1).numpy() for j, (name, _) in enumerate(heads())}

    def read_values(self, images) -> dict[str, list[str]]:
        """Per head name, the most likely value of every image."""
        probs = self.probabilities(images)
        return {name: [values[int(k)] for k in probs[name].argmax(1)] for name, values in heads()}

    def read(self, images) -> list[dict]:
        """Per image: ``{"count": 1|2, "background": str, "objects": [per-object dict]}``; the objects are the
        ``object`` slot when the image reads as one object, else the ``left`` and ``right`` slots. An object dict
        holds ``shape, colour, pattern, colour2, marking, marking_colour`` (``colour2`` / ``marking_colour`` are
        None when absent) and, for a single object, ``size, position``."""
        vals = self.read_values(images)
        out = []
        for i in range(len(vals["count"])):
            count = int(vals["count"][i])
            slots = ("object",) if count == 1 else ("left", "right")
            objects = []
            for slot in slots:
                o = {a: vals[f"{slot}.{a}"][i] for a in LOOK_ATTRS}
                o.update({a: vals[f"{slot}.{a}"][i] for a in PLACE_ATTRS if slot == "object"})
                o["colour2"] = None if o["colour2"] == NONE else o["colour2"]
                o["marking_colour"] = None if o["marking_colour"] == NONE else o["marking_colour"]
                objects.append(o)
            out.append({"count": count, "background": vals["background"][i], "objects": objects})
        return out

    def instance_match(self, images, instance, slot: str = "object") -> InstanceMatch:
        """How well ``slot`` of ``images`` matches ``instance``: a :class:`cns_ray.world.concepts.Concept` (or anything
        with ``shape`` and ``look``) or a ``(shape, Look)`` pair."""
        if slot not in SLOTS:
            raise InputError(f"slot={slot!r} is not one of {list(SLOTS)} (one-object images: 'object'; two-object: "
                             "'left' or 'right')")
        shape, look = (instance.shape, instance.look) if hasattr(instance, "look") else instance
        want = look_values(shape, look)
        vals = self.read_values(images)
        right = np.array([[vals[f"{slot}.{a}"][i] == v for a, v in want.items()] for i in range(len(vals["count"]))])
        if right.size == 0:
            raise InputError("instance_match needs at least one image")
        return InstanceMatch(attributes=float(right.mean()), exact=float(right.all(1).mean()),
                             per_attribute={a: float(right[:, j].mean()) for j, a in enumerate(want)}, n=len(right))

    def accuracy(self, images, scenes: list[Scene]) -> dict[str, float]:
        """Per head name, the fraction of the scenes it applies to that read right (heads applying to none: absent)."""
        vals, out = self.read_values(images), {}
        truth = [scene_values(s) for s in scenes]
        for name, _ in heads():
            hits = [vals[name][i] == t[name] for i, t in enumerate(truth) if name in t]
            if hits:
                out[name] = float(np.mean(hits))
        return out

    def save(self, folder: str | Path, ceilings: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps({"kind": KIND, **asdict(self.net.cfg)}, indent=1))
        if ceilings is not None:
            self.ceilings = ceilings
            (folder / CEILINGS).write_text(json.dumps(ceilings, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Readout":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG).exists() or not (folder / WEIGHTS).exists():
            raise ModelLoadError(f"{folder} is not a readout folder (needs {CONFIG} and {WEIGHTS}): train one with "
                                 "python -m pipelines.train_readout --out FOLDER")
        raw = json.loads((folder / CONFIG).read_text())
        if raw.pop("kind", None) != KIND:
            raise ModelLoadError(f"{folder / CONFIG} is not a {KIND} config")
        raw["widths"] = tuple(raw["widths"])
        net = ReadoutNet(ReadoutConfig(**raw))
        try:
            net.load_state_dict(load_file(str(folder / WEIGHTS)))
        except RuntimeError as e:
            raise ModelLoadError(f"{folder / WEIGHTS} does not fit the readout of {CONFIG} (heads changed? retrain with "
                                 f"python -m pipelines.train_readout): {e}") from e
        ceilings = json.loads((folder / CEILINGS).read_text()) if (folder / CEILINGS).exists() else None
        return cls(net, ceilings)


def default_readout_folder() -> Path:
    from cns_ray.data import data_path

    return data_path("eval", "readout")


def load_readout(folder: str | Path | None = None) -> Readout:
    """The shipped readout (``cns_ray/data/eval/readout``) or one in ``folder``."""
    return Readout.load(folder or default_readout_folder())
