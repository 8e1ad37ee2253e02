"""An exact pixel-colour check (numpy only): does an image hold a concept's palette colours, and only those?

The world paints every object in exact colours (:data:`cns_ray.world.scene.COLOURS`): the body colour, the
pattern's second colour, the marking's colour. For an image and an instance this module measures

- ``recall``: the fraction of the instance's palette colours present, a colour being present when at least
  ``min_pixels`` object pixels lie within ``tol`` of it;
- ``precision``: among the object pixels that are a world colour (within ``tol`` of one of ``COLOURS``: flat,
  "pure" pixels), the share that are one of the palette colours. Blended pixels (anti-aliased edges, where two
  colours meet; on a small object more than half its pixels) are no world colour and count on neither side.

Object pixels are those farther than ``tol`` from the background colour (given, or the median of the region's
border pixels). ``region`` is the whole image (a one-object image) or its left / right half (the objects of a
two-object image).

Tolerance: Euclidean RGB distance <= 40 (of 255). The closest two world colours (yellow and orange) are 83 apart,
so a pixel is within ``tol`` of at most one of them; anti-aliased edge pixels (blends with the background or a
neighbouring colour) mostly fall outside every ball. A
palette colour within ``tol`` of the background (white on the white background: 17 apart) cannot be told from it
and is left out of the palette for that image (``PaletteScore.unmeasurable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cns_ray.errors import InputError
from cns_ray.world.scene import BACKGROUNDS, COLOURS, Look

REGIONS = ("all", "left", "right")


@dataclass(frozen=True)
class PixelTolerance:
    """How close a pixel must be to a colour to count as it."""

    tol: float = 40.0
    """Euclidean RGB distance (0-255 units): half the closest two world colours' distance (83, yellow-orange)."""
    min_pixels: int = 2
    """Pixels within ``tol`` needed for a palette colour to count as present."""

    def __post_init__(self) -> None:
        if not 0 < self.tol < 255 * np.sqrt(3) or self.min_pixels < 1:
            raise InputError(f"PixelTolerance(tol={self.tol}, min_pixels={self.min_pixels}): tol must be in "
                             f"(0, {255 * np.sqrt(3):.0f}) and min_pixels >= 1")


@dataclass
class PaletteScore:
    recall: float
    """Fraction of the measurable palette colours present (1.0 when none is measurable)."""
    precision: float
    """Share of the pure object pixels (within ``tol`` of a world colour) that are a palette colour (0.0 when none)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Per measurable palette colour, its pixels within ``tol``."""
    object_pixels: int = 0
    pure_pixels: int = 0
    """Object pixels within ``tol`` of some world colour."""
    unmeasurable: tuple[str, ...] = ()
    """Palette colours within ``tol`` of the background (left out)."""


def palette(instance) -> tuple[str, ...]:
    """The colour names an instance paints with: a Concept / (shape, Look) pair / Look -> body, second, marking."""
    look = instance if isinstance(instance, Look) else instance.look if hasattr(instance, "look") else instance[1]
    names = [look.colour, look.colour2, look.marking_colour]
    return tuple(dict.fromkeys(n for n in names if n is not None))


def _region(image: np.ndarray, region: str) -> np.ndarray:
    if region not in REGIONS:
        raise InputError(f"region={region!r} is not one of {list(REGIONS)} (one-object images: 'all'; two-object: "
                         "'left' or 'right')")
    w = image.shape[1]
    return image if region == "all" else image[:, : w // 2] if region == "left" else image[:, w // 2 :]


def border_colour(pixels: np.ndarray) -> np.ndarray:
    """Per-channel median of the border pixels of [H, W, 3] (the background, objects never fill the border)."""
    frame = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])  # [2H + 2W, 3]
    return np.median(frame.astype(np.float64), axis=0)


def palette_score(image: np.ndarray, instance, region: str = "all", background: str | None = None,
                  tolerance: PixelTolerance = PixelTolerance()) -> PaletteScore:
    """Score one uint8 [H, W, 3] image (or its ``region``) against ``instance``'s palette."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise InputError(f"image of shape {image.shape} dtype {image.dtype}: expected uint8 [H, W, 3]")
    if background is not None and background not in BACKGROUNDS:
        raise InputError(f"background={background!r} is not one of {list(BACKGROUNDS)} (or None: read from the border)")
    px = _region(image, region).astype(np.float64)  # [H, W', 3]
    bg = np.asarray(BACKGROUNDS[background], np.float64) if background else border_colour(px)  # [3]
    tol = tolerance.tol
    obj = np.linalg.norm(px - bg, axis=-1) > tol  # [H, W']
    names = palette(instance)
    measurable = [n for n in names if np.linalg.norm(np.asarray(COLOURS[n], np.float64) - bg) > tol]
    near = {n: np.linalg.norm(px - np.asarray(COLOURS[n], np.float64), axis=-1) <= tol for n in measurable}  # [H, W']
    counts = {n: int((m & obj).sum()) for n, m in near.items()}
    in_palette = np.zeros_like(obj)
    for m in near.values():
        in_palette |= m
    world = np.stack(list(COLOURS.values())).astype(np.float64)  # [C, 3]
    pure = obj & (np.linalg.norm(px[..., None, :] - world, axis=-1) <= tol).any(-1)  # [H, W']
    n_pure = int(pure.sum())
    recall = float(np.mean([counts[n] >= tolerance.min_pixels for n in measurable])) if measurable else 1.0
    precision = float((in_palette & pure).sum() / n_pure) if n_pure else 0.0
    return PaletteScore(recall, precision, counts, int(obj.sum()), n_pure, tuple(n for n in names if n not in measurable))


def palette_scores(images, instance, region: str = "all", background: str | None = None,
                   tolerance: PixelTolerance = PixelTolerance()) -> dict[str, float]:
    """Means over uint8 [N, H, W, 3] images: ``recall``, ``precision`` and ``full`` (fraction with recall 1)."""
    if len(images) == 0:
        raise InputError("palette_scores needs at least one image")
    scores = [palette_score(img, instance, region, background, tolerance) for img in images]
    return {"recall": float(np.mean([s.recall for s in scores])),
            "precision": float(np.mean([s.precision for s in scores])),
            "full": float(np.mean([s.recall == 1.0 for s in scores])), "n": len(scores)}
