"""A small CLIP-style image-text model for the toy world v2 (the metric model of the paper's protocol).

An image encoder (a 4-level CNN, 32x32 RGB -> a 4x4 map flattened, so where things are is kept -> 128) and a text
encoder (word embeddings + positions + a 2-layer transformer, mean-pooled -> 128) trained contrastively on
rendered v2 scenes (one and two objects, held-out instances included: as CLIP has seen dogs the base model was
never tuned on), with full captions, captions with dropped look words, and hard negatives that differ from the
true caption in one attribute (``python -m pipelines.train_metric``). Embeddings are L2-normalised; cosine
similarity gives image alignment and text alignment. Its per-attribute ceilings on rendered truth are in
``ceilings.json`` beside the weights. A real CLIP folder (transformers ``CLIPModel``) can stand in via
:func:`load_metric_model`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cns_ray.errors import InputError, ModelLoadError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CEILINGS = "ceilings.json"
TOY_METRIC = "toy"


@dataclass(frozen=True)
class MetricConfig:
    """Shapes of the toy metric model."""

    vocab: tuple[str, ...]
    """Words (index 0 = padding, 1 = unknown)."""
    resolution: int = 32
    dim: int = 128
    """Embedding width (shared space)."""
    max_words: int = 40
    """Longest caption in words (a two-object v2 caption with every look word has 33)."""
    phrase_ends: tuple[str, ...] = ("left", "center", "right")
    """Words that end an object's phrase (``... at the left``): each word gets the embedding of its phrase's index
    (the count of such words before it), so a look binds to its place and a swap of the two objects is seen."""
    text_dim: int = 64
    """Text transformer width (2 layers, 4 heads; projected to ``dim``): narrow, as the vocabulary is ~45 words."""
    widths: tuple[int, ...] = (32, 64, 128, 128)
    """Image encoder channels per level; levels after the first halve the side (32 -> 16 -> 8 -> 4)."""


def words_of(text: str) -> list[str]:
    return text.lower().replace(",", " ").split()


class ImageEncoder(nn.Module):
    """Two 3x3 convs per level (GroupNorm: per-image statistics), then a linear map of the flattened last map."""

    def __init__(self, dim: int, resolution: int, widths: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, c), nn.GELU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        side = resolution // 2 ** (len(widths) - 1)
        self.head = nn.Linear(c_in * side * side, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, R, R] in [-1, 1]
        return self.head(self.net(x).flatten(1))  # [B, dim]


MAX_PHRASES = 4


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, max_words: int, width: int, end_ids: list[int]):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_words, width))
        self.phrase = nn.Parameter(torch.zeros(MAX_PHRASES, width))
        self.register_buffer("end_ids", torch.tensor(end_ids, dtype=torch.long), persistent=False)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, L] (0 = padding)
        pad = ids == 0  # [B, L]
        ends = torch.isin(ids, self.end_ids).long()  # [B, L]
        phrase = (ends.cumsum(1) - ends).clamp(max=MAX_PHRASES - 1)  # [B, L] phrase-end words strictly before
        x = self.tok(ids) + self.pos[: ids.shape[1]] + self.phrase[phrase]  # [B, L, width]
        h = self.enc(x, src_key_padding_mask=pad)  # [B, L, width]
        keep = (~pad).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1))  # [B, dim]


class ToyClip(nn.Module):
    """The toy CLIP: ``embed_images`` / ``embed_texts`` give unit vectors in one space."""

    def __init__(self, cfg: MetricConfig):
        super().__init__()
        self.cfg = cfg
        self.index = {w: i for i, w in enumerate(cfg.vocab)}
        self.image = ImageEncoder(cfg.dim, cfg.resolution, tuple(cfg.widths))
        ends = [self.index[w] for w in cfg.phrase_ends if w in self.index]
        self.text = TextEncoder(len(cfg.vocab), cfg.dim, cfg.max_words, cfg.text_dim, ends)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Word ids [B, L] (L: the longest text, at most ``max_words``; 0 = padding, 1 = unknown word)."""
        rows = [[self.index.get(x, 1) for x in words_of(t)][: self.cfg.max_words] for t in texts]
        ids = torch.zeros(len(texts), max([len(r) for r in rows] + [1]), dtype=torch.long)  # [B, L]
        for i, w in enumerate(rows):
            ids[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        return ids

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pixels), dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.text(self.tokenize(texts)), dim=-1)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """uint8 [N, H, W, 3] (numpy or list) or float [N, 3, H, W] in [-1, 1] -> [N, dim] unit vectors."""
        return self.image_features(_pixels(images, self.cfg.resolution))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text_features(list(texts))

    def save(self, folder: str | Path, ceilings: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps({"kind": "toy-clip", **asdict(self.cfg)}, indent=1))
        if ceilings is not None:
            (folder / CEILINGS).write_text(json.dumps(ceilings, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ToyClip":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG).exists() or not (folder / WEIGHTS).exists():
            raise ModelLoadError(f"{folder} is not a toy metric model (needs {CONFIG} and {WEIGHTS}): train one with "
                                 "python -m pipelines.train_metric --out FOLDER")
        raw = json.loads((folder / CONFIG).read_text())
        raw.pop("kind", None)
        raw["vocab"] = tuple(raw["vocab"])
        for key in ("widths", "phrase_ends"):
            if key in raw:
                raw[key] = tuple(raw[key])
        model = cls(MetricConfig(**raw))
        try:
            model.load_state_dict(load_file(str(folder / WEIGHTS)))
        except RuntimeError as e:
            raise ModelLoadError(f"{folder / WEIGHTS} does not fit the toy CLIP of {folder / CONFIG} (a v1 model? "
                                 f"retrain with python -m pipelines.train_metric --out {folder}): {e}") from e
        return model.eval().requires_grad_(False)


def _pixels(images, resolution: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor) and images.dtype.is_floating_point:
        x = images.float()
    else:
        arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InputError(f"images of shape {arr.shape}: expected [N, H, W, 3] uint8")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area" if x.shape[-1] > resolution else "bilinear")
    return x  # [N, 3, R, R]


class HFClip:
    """A transformers ``CLIPModel`` folder behind the same two methods (for real-scale evaluation)."""

    def __init__(self, folder: str | Path):
        from transformers import CLIPModel, CLIPProcessor

        try:
            self.model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
            self.processor = CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # transformers raises many types here
            raise ModelLoadError(f"could not load a CLIP model from {folder}: {e}") from e

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            images = images.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).numpy()
        inputs = self.processor(images=list(images), return_tensors="pt")
        return F.normalize(self.model.get_image_features(**inputs), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True)
        return F.normalize(self.model.get_text_features(**inputs), dim=-1)


def load_ceilings(folder: str | Path | None = None) -> dict:
    """The recorded ceilings of a toy CLIP folder (the shipped one by default); {} when none were recorded."""
    path = Path(folder or default_metric_folder()) / CEILINGS
    return json.loads(path.read_text()) if path.exists() else {}


def default_metric_folder() -> Path:
    from cns_ray.data import data_path

    return data_path("eval", "toy-clip")


def load_metric_model(spec: str = TOY_METRIC):
    """``toy`` (the shipped toy CLIP), a toy-clip folder, or a transformers CLIP folder."""
    folder = default_metric_folder() if spec == TOY_METRIC else Path(spec)
    if (folder / CONFIG).exists() and json.loads((folder / CONFIG).read_text()).get("kind") == "toy-clip":
        return ToyClip.load(folder)
    if (folder / CONFIG).exists():
        return HFClip(folder)
    raise ModelLoadError(f"metric model {spec!r}: no {CONFIG} at {folder}; give 'toy', a toy-clip folder or a CLIP folder")
