"""A small CLIP-style image-text model for the toy world (the metric model of the paper's protocol).

An image encoder (a 4-level CNN, 32x32 RGB -> 128) and a text encoder (word embeddings + a 2-layer transformer,
mean-pooled -> 128) trained contrastively on world-like scenes that include every held-out shape and pattern (as
CLIP has seen dogs the base model was never tuned on). Embeddings are L2-normalised; cosine similarity gives image
alignment and text alignment. A real CLIP folder (transformers ``CLIPModel``) can stand in via :func:`load_metric_model`.
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
TOY_METRIC = "toy"


@dataclass(frozen=True)
class MetricConfig:
    """Shapes of the toy metric model."""

    vocab: tuple[str, ...]
    """Words (index 0 = padding, 1 = unknown)."""
    resolution: int = 32
    dim: int = 128
    """Embedding width (shared space)."""
    max_words: int = 24


def words_of(text: str) -> list[str]:
    return text.lower().replace(",", " ").split()


class ImageEncoder(nn.Module):
    def __init__(self, dim: int, resolution: int):
        super().__init__()
        chans = (3, 32, 64, 128, 128)
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, chans[i + 1]), nn.GELU()]
        self.net = nn.Sequential(*layers)
        side = resolution // 8
        self.head = nn.Linear(128 * side * side, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, R, R] in [-1, 1]
        return self.head(self.net(x).flatten(1))  # [B, dim]


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, max_words: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(max_words, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [B, L] (0 = padding)
        pad = ids == 0  # [B, L]
        h = self.enc(self.tok(ids) + self.pos[: ids.shape[1]], src_key_padding_mask=pad)  # [B, L, dim]
        keep = (~pad).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1).clamp(min=1))  # [B, dim]


class ToyClip(nn.Module):
    """The toy CLIP: ``embed_images`` / ``embed_texts`` give unit vectors in one space."""

    def __init__(self, cfg: MetricConfig):
        super().__init__()
        self.cfg = cfg
        self.index = {w: i for i, w in enumerate(cfg.vocab)}
        self.image = ImageEncoder(cfg.dim, cfg.resolution)
        self.text = TextEncoder(len(cfg.vocab), cfg.dim, cfg.max_words)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.cfg.max_words, dtype=torch.long)  # [B, L]
        for i, t in enumerate(texts):
            w = [self.index.get(x, 1) for x in words_of(t)][: self.cfg.max_words]
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

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps({"kind": "toy-clip", **asdict(self.cfg)}, indent=1))
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
        model = cls(MetricConfig(**raw))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
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
