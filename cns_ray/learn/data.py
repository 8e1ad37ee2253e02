"""Concept images and captions: loading, captioning with the placeholder, seeded augmentation.

Images are loaded once (RGB, shorter side resized, centre-cropped) to a slightly larger ``load_size`` so that
augmentation can take a small random crop of ``resolution`` from it, and mirror it half of the time (its caption is
then mirrored too: ``left`` and ``right`` trade places); without augmentation the centre crop is used.
Every random draw comes from a ``torch.Generator`` the caller owns, so a run is reproducible and resumable.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cns_ray.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTIONS_FILE = "captions.txt"
CAPTION_TEMPLATE = "a photo of a {class_word}"
CROP_MARGIN = 1.0 / 8.0
"""Images are kept this much larger than the training resolution; a random crop takes up to that margin."""


@dataclass
class ConceptData:
    """A concept's images and their training captions (with the placeholder token)."""

    images: torch.Tensor  # [N, 3, S, S] float32 in [-1, 1], S = load_size >= resolution
    captions: list[str]  # [N] training captions without the placeholder (selection_caption): what selection scores
    train_captions: list[str]  # [N] captions with the placeholder token
    resolution: int
    files: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, indices: torch.Tensor, gen: torch.Generator | None, augment: bool) -> torch.Tensor:
        """Images at ``indices`` cropped to [B, 3, R, R]; random crop + hflip from ``gen`` when ``augment``."""
        return self.batch_and_flips(indices, gen, augment)[0]

    def batch_and_flips(self, indices: torch.Tensor, gen: torch.Generator | None, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`batch`, and which images were mirrored (bool [B]): their captions' left and right trade places
        (:func:`mirror_caption`), or a flipped image would contradict its caption."""
        r, s = self.resolution, self.images.shape[-1]
        out, flips = [], []
        for i in indices.tolist():
            img = self.images[i]  # [3, S, S]
            if augment and gen is not None:
                top, left = (int(v) for v in torch.randint(0, s - r + 1, (2,), generator=gen))
                flip = bool(torch.rand((), generator=gen) < 0.5)
            else:
                top = left = (s - r) // 2
                flip = False
            crop = img[:, top : top + r, left : left + r]
            out.append(crop.flip(-1) if flip else crop)
            flips.append(flip)
        return torch.stack(out), torch.tensor(flips, dtype=torch.bool)  # [B, 3, R, R], [B]


_SIDES = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally mirrored image: the words ``left`` and ``right`` swapped (case kept)."""
    def swap(m: re.Match) -> str:
        w = m.group(0)
        new = "right" if w.lower() == "left" else "left"
        return new.capitalize() if w[0].isupper() else new

    return _SIDES.sub(swap, caption)


def caption_ids(tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[N, T]`` of ``captions`` padded to the encoder's window, and of their mirrored captions
    (:func:`mirror_caption`, for images the augmentation flips)."""
    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    return ids(captions), ids([mirror_caption(c) for c in captions])


def mirrored_ids(ids: torch.Tensor, mirrored: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Token ids ``[B, T]`` of a batch: row b from ``mirrored`` where image b was flipped, else from ``ids``."""
    return torch.where(flips.to(ids.device)[:, None], mirrored, ids)


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (png/jpg/jpeg/webp), sorted by name."""
    p = Path(folder)
    if not p.is_dir():
        raise InputError(f"image folder {str(p)!r} does not exist or is not a folder: give a folder of png/jpg/webp images")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(
            f"image folder {str(p)!r} has 0 images (need >= 1 of {', '.join(IMAGE_SUFFIXES)}): "
            "put the concept's images there (3-20 recommended)"
        )
    return files


def load_image(path: Path, size: int) -> torch.Tensor:
    """RGB image, shorter side resized to ``size`` and centre-cropped: [3, size, size] float32 in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.float32)  # [H, W, 3] in [0, 255]
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(
            f"image {str(path)!r} is unreadable ({type(e).__name__}: {e}): replace or remove that file"
        ) from e
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0).contiguous()


def read_captions(files: list[Path], class_word: str, captions: list[str] | None = None) -> list[str]:
    """One caption per image: given list, else ``captions.txt`` (a line per image, in file order), else per-image
    ``<stem>.txt`` sidecars, else the template ``"a photo of a {class_word}"``."""
    n = len(files)
    folder = files[0].parent
    source = "the captions argument"
    if captions is None and (folder / CAPTIONS_FILE).exists():
        source = str(folder / CAPTIONS_FILE)
        lines = (folder / CAPTIONS_FILE).read_text(encoding="utf-8").splitlines()
        captions = [line.strip() for line in lines if line.strip()]
    if captions is None:
        sidecars = [f.with_suffix(".txt") for f in files]
        if any(s.exists() for s in sidecars):
            missing = [s.name for s in sidecars if not s.exists()]
            if missing:
                raise InputError(
                    f"{len(missing)} of {n} images have no caption sidecar ({', '.join(missing[:5])}): "
                    f"add them, or one {CAPTIONS_FILE} with a line per image"
                )
            return [s.read_text(encoding="utf-8").strip() for s in sidecars]
        return [CAPTION_TEMPLATE.format(class_word=class_word)] * n
    captions = [c.strip() for c in captions]
    if len(captions) < n or any(not c for c in captions):
        raise InputError(
            f"{source} has {sum(bool(c) for c in captions)} non-empty caption(s) for {n} images: "
            f"give one caption per image (in file-name order), or none to use {CAPTION_TEMPLATE!r}"
        )
    if len(captions) > n:
        log.warning("%s has %d captions for %d images; using the first %d", source, len(captions), n, n)
    return captions[:n]


PLACEHOLDER_RE = re.compile(r"<[^<>\s]+>")
"""A placeholder token as captions write it: ``<rex>``."""


def with_placeholder(caption: str, token: str, class_word: str) -> str:
    """The training caption: ``"a photo of a dog"`` -> ``"a photo of a <tok> dog"``; ``"<tok> dog, ..."`` prepended
    if the class word is absent; a caption that already holds ``token`` (``"a photo of <tok> dog"``, the natural way
    to write one) is used as it is."""
    if re.search(rf"(?<!\S){re.escape(token)}(?!\S)", caption):
        return caption
    m = re.search(rf"(?<![\w<]){re.escape(class_word)}(?!\w)", caption, flags=re.IGNORECASE)
    if m:
        return f"{caption[: m.start()]}{token} {caption[m.start():]}"
    return f"{token} {class_word}, {caption}"


def selection_caption(caption: str) -> str:
    """The text concept-neuron selection scores: the training caption without its placeholder tokens.

    Selection runs on the base model, before the placeholder exists in its tokenizer (a byte-level BPE would spell
    ``<rex>`` as letters, and those letters' embeddings would pick neurons); without the token the caption still
    names the class word and the context, which is what the base's neurons respond to."""
    return " ".join(PLACEHOLDER_RE.sub(" ", caption).split())


def load_concept(
    folder: str | Path,
    class_word: str,
    token: str,
    resolution: int,
    captions: list[str] | None = None,
    augment: bool = True,
) -> ConceptData:
    """Load a concept folder; raises :class:`InputError` naming the file or value at fault."""
    if not class_word or not class_word.strip():
        raise InputError("class word is empty: give the concept's category, e.g. 'dog'")
    files = list_images(folder)
    caps = read_captions(files, class_word.strip(), captions)
    size = resolution + (int(round(resolution * CROP_MARGIN)) if augment else 0)
    images = torch.stack([load_image(f, size) for f in files])  # [N, 3, S, S]
    train = [with_placeholder(c, token, class_word.strip()) for c in caps]
    log.info("loaded %d images from %s at %dpx; first training caption %r", len(files), folder, size, train[0])
    return ConceptData(images, [selection_caption(t) for t in train], train, resolution, [f.name for f in files])
