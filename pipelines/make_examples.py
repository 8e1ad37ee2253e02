"""Draw the bundled example concepts (small deterministic PNGs + captions.txt) into cns_ray/data/examples/.

    python -m pipelines.make_examples [--out DIR] [--size 64]

Four concepts, four images each: the object in varied positions, sizes and backgrounds. Re-running gives the
same bytes (fixed seed, no randomness outside ``random.Random(seed)``).
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

BACKGROUNDS = [(235, 235, 225), (200, 220, 240), (210, 235, 205), (240, 215, 200), (225, 225, 235)]


def _toy(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """A red striped toy block with wheels."""
    box = (cx - r, cy - r * 0.7, cx + r, cy + r * 0.5)
    d.rectangle(box, fill=(210, 30, 30))
    step = max(2, int(r / 3))
    for x in range(int(box[0]) + step // 2, int(box[2]), step * 2):
        d.rectangle((x, box[1], min(x + step - 1, box[2]), box[3]), fill=(245, 245, 245))
    for wx in (cx - r * 0.6, cx + r * 0.6):
        d.ellipse((wx - r * 0.25, cy + r * 0.4, wx + r * 0.25, cy + r * 0.9), fill=(30, 30, 30))


def _mug(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """A blue round mug with a handle."""
    d.ellipse((cx + r * 0.35, cy - r * 0.45, cx + r * 1.05, cy + r * 0.35), outline=(20, 50, 170), width=max(2, int(r / 5)))
    d.rounded_rectangle((cx - r * 0.7, cy - r * 0.8, cx + r * 0.6, cy + r * 0.8), radius=r * 0.3, fill=(30, 70, 200))
    d.ellipse((cx - r * 0.7, cy - r * 0.95, cx + r * 0.6, cy - r * 0.65), fill=(90, 130, 230))


def _sculpture(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """A yellow five-pointed star on a grey plinth."""
    pts = []
    for i in range(10):
        a = -math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        pts.append((cx + rr * math.cos(a), cy - r * 0.2 + rr * math.sin(a)))
    d.polygon(pts, fill=(240, 200, 20), outline=(150, 120, 0))
    d.rectangle((cx - r * 0.4, cy + r * 0.7, cx + r * 0.4, cy + r * 1.0), fill=(120, 120, 120))


def _backpack(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float) -> None:
    """A green backpack: rounded body, front pocket, top strap."""
    d.arc((cx - r * 0.4, cy - r * 1.1, cx + r * 0.4, cy - r * 0.5), 180, 360, fill=(20, 90, 30), width=max(2, int(r / 6)))
    d.rounded_rectangle((cx - r * 0.75, cy - r * 0.8, cx + r * 0.75, cy + r), radius=r * 0.4, fill=(40, 150, 60))
    d.rounded_rectangle((cx - r * 0.5, cy + r * 0.1, cx + r * 0.5, cy + r * 0.8), radius=r * 0.2, fill=(25, 110, 45))


CONCEPTS = {
    # name: (class word, drawer, caption words)
    "toy": ("toy", _toy, "red striped"),
    "mug": ("mug", _mug, "blue round"),
    "sculpture": ("sculpture", _sculpture, "yellow star"),
    "backpack": ("backpack", _backpack, "green"),
}
PLACES = ["on a table", "in a room", "in the park", "on a white background"]


def draw_concept(name: str, out: Path, size: int = 64, n: int = 4, seed: int = 0) -> Path:
    class_word, drawer, look = CONCEPTS[name]
    rng = random.Random(f"{seed}-{name}")
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    captions = []
    for i in range(n):
        bg = BACKGROUNDS[(i + len(name)) % len(BACKGROUNDS)]
        im = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(im)
        d.rectangle((0, int(size * 0.75), size, size), fill=tuple(max(0, c - 40) for c in bg))  # floor
        r = size * rng.uniform(0.2, 0.3)
        cx = rng.uniform(r + 2, size - r - 2)
        cy = rng.uniform(r + 2, size - r - 2)
        drawer(d, cx, cy, r)
        im.save(folder / f"{i:02d}.png", optimize=False)
        captions.append(f"a photo of a {look} {class_word} {PLACES[i % len(PLACES)]}")
    (folder / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "cns_ray" / "data" / "examples"))
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    for name in CONCEPTS:
        print(draw_concept(name, Path(args.out), args.size))


if __name__ == "__main__":
    main()
