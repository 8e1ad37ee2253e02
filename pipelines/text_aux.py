"""An auxiliary caption-reading loss for the base's text encoder (``train_base --text-aux W``).

Trained jointly from scratch on the diffusion loss alone, the toy text encoder stays close to a bag of words: the
output at a colour word hardly depends on the words around it (whether it names the body or the pattern's second
colour), and pattern words are nearly erased (``striped`` vs ``dotted`` 0.33 apart, two colours 4.6). The UNet
then cannot know which colour goes where, and at high noise it predicts the mean colour of the object: the base
draws colours and shapes, not patterns or markings. A real base's text encoder comes pretrained (CLIP); this loss
stands in for that pretraining: from the text encoder's output at each object's position word (``left`` in
``... cross with a white dot at the left``, the first token that has seen the object's whole phrase, the model
being causal) small linear heads read back what the caption says of that object: class, pattern, body colour,
second colour, marking and marking colour. A field the caption does not state (dropped words) is not scored.
The heads are training-only: they are kept in ``train_state.pt``, not in the model folder.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cns_ray.world.scene import CLASSES, COLOURS, MARKINGS, PATTERNS, parse_caption

IGNORE = -100
COLOUR_NAMES = tuple(COLOURS)
FIELDS: dict[str, tuple[str, ...]] = {
    "shape": CLASSES,
    "pattern": PATTERNS,
    "colour": COLOUR_NAMES,
    "colour2": COLOUR_NAMES + ("none",),
    "marking": MARKINGS,
    "marking_colour": COLOUR_NAMES,
}
"""Each field the heads read, and its values (``colour2`` ``none``: a stated plain colour; ``marking`` ``none`` is
never a target: a caption without a marking phrase may have dropped it)."""


def object_targets(tokenizer, text: str) -> list[tuple[int, list[int]]]:
    """Per object of a world caption: (token index of its position word, one label per :data:`FIELDS` entry, or
    :data:`IGNORE` where the caption does not say)."""
    parsed = parse_caption(text)["objects"]
    words = text.split()
    out, at = [], 0
    for o in parsed:
        at = words.index(o["position"], at)  # the first position word after the previous object's
        prefix = " ".join(words[: at + 1])
        index = len(tokenizer(prefix).input_ids) - 2  # without the end token: the position word's last token
        labels = []
        for name, values in FIELDS.items():
            if name == "colour2" and "colour" in o and "colour2" not in o:
                value = "none"
            else:
                value = o.get(name)
            labels.append(values.index(value) if value in values else IGNORE)
        out.append((index, labels))
        at += 1
    return out


class CaptionHeads(nn.Module):
    """Linear read-outs of :data:`FIELDS` from text-encoder features [N, D]."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleDict({k: nn.Linear(dim, len(v)) for k, v in FIELDS.items()})

    def loss(self, features: torch.Tensor, targets: list[list[tuple[int, list[int]]]]) -> torch.Tensor:
        """``features`` [B, T, D] (the text encoder's output); ``targets`` per caption (``[]`` for an empty one):
        mean cross-entropy over every stated field."""
        rows, idx, labels = [], [], []
        for b, objs in enumerate(targets):
            for index, lab in objs:
                rows.append(b), idx.append(index), labels.append(lab)
        if not rows:
            return features.sum() * 0.0
        f = features[torch.tensor(rows), torch.tensor(idx)]  # [N, D]
        y = torch.tensor(labels)  # [N, F]
        total, count = features.new_zeros(()), 0
        for j, head in enumerate(self.heads.values()):
            yj = y[:, j]
            n = int((yj != IGNORE).sum())
            if n:
                total = total + F.cross_entropy(head(f), yj, ignore_index=IGNORE, reduction="sum")
                count += n
        return total / max(count, 1)
