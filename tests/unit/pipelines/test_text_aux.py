"""pipelines/text_aux.py: the caption-reading targets are what each object's phrase states, read at its position
word, and the heads' loss scores only stated fields."""

import torch

from cns_ray.world.scene import CLASSES, COLOURS, PATTERNS, Dropout, Look, Obj, Scene, caption
from pipelines.text_aux import FIELDS, IGNORE, CaptionHeads, object_targets
from pipelines.train_base import build_tokenizer

TOK = build_tokenizer()
NAMES = list(FIELDS)


def labels_of(lab):
    return {k: (FIELDS[k][v] if v != IGNORE else None) for k, v in zip(NAMES, lab)}


def test_targets_are_the_stated_fields_at_each_objects_position_word():
    scene = Scene((Obj("triangle", Look("yellow"), "small", "left"),
                   Obj("cross", Look("purple", "two-tone", "orange", "dot", "white"), "small", "right")), "grey")
    text = caption(scene)
    (i0, l0), (i1, l1) = object_targets(TOK, text)
    toks = TOK.convert_ids_to_tokens(TOK(text).input_ids)
    assert toks[i0] == "Ġleft" and toks[i1] == "Ġright"  # two-tone is 3 tokens: the index counts tokens, not words
    assert labels_of(l0) == {"shape": "triangle", "pattern": "plain", "colour": "yellow", "colour2": "none",
                             "marking": None, "marking_colour": None}
    assert labels_of(l1) == {"shape": "cross", "pattern": "two-tone", "colour": "purple", "colour2": "orange",
                             "marking": "dot", "marking_colour": "white"}


def test_dropped_words_are_not_scored():
    scene = Scene((Obj("circle", Look("red", "striped", "blue", "bar", "green"), "large", "center"),), "white")
    text = caption(scene, Dropout(colour=True, pattern=False, marking=True))
    assert text == "a large striped circle at the center on a white background"
    [(index, lab)] = object_targets(TOK, text)
    assert TOK.convert_ids_to_tokens(TOK(text).input_ids)[index] == "Ġcenter"
    assert labels_of(lab) == {"shape": "circle", "pattern": "striped", "colour": None, "colour2": None,
                              "marking": None, "marking_colour": None}


def test_heads_learn_to_read_fields_from_features_and_ignore_empty_captions():
    torch.manual_seed(0)
    heads = CaptionHeads(8)
    # features that carry the shape at the scored index and noise elsewhere
    targets = [[(1, [s, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE])] for s in range(len(CLASSES))] + [[]]
    feats = torch.randn(len(targets), 3, 8)
    for s in range(len(CLASSES)):
        feats[s, 1] = torch.nn.functional.one_hot(torch.tensor(s), 8).float() * 3
    opt = torch.optim.Adam(heads.parameters(), lr=0.1)
    first = float(heads.loss(feats, targets))
    for _ in range(50):
        opt.zero_grad()
        loss = heads.loss(feats, targets)
        loss.backward()
        opt.step()
    assert first > 1.0 and float(loss) < 0.05
    assert float(heads.loss(feats, [[]] * len(targets))) == 0.0
    assert len(FIELDS["pattern"]) == len(PATTERNS) and FIELDS["colour"] == tuple(COLOURS)
