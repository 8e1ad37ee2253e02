"""Placeholder tokens: the class word is read as it appears inside a caption."""

import torch

from cns_ray.models.text import add_placeholder_token, word_ids_in_caption


def test_class_word_ids_are_its_in_caption_spelling(fresh_tiny):
    tok = fresh_tiny.tokenizer
    word = "circle"
    in_caption = tok("a large circle at the left", add_special_tokens=False).input_ids
    ids = word_ids_in_caption(tok, word)
    assert ids == [in_caption[2]]  # one token ("Ġcircle"), the one the caption holds
    bare = tok(word, add_special_tokens=False).input_ids
    assert bare != ids  # the bug this guards against: the bare word is spelt in pieces by the byte-level BPE


def test_new_token_starts_at_the_in_caption_class_word_embedding(fresh_tiny):
    tok, te = fresh_tiny.tokenizer, fresh_tiny.text_encoder
    cls_id = word_ids_in_caption(tok, "square")[0]
    new = add_placeholder_token(tok, te, "<zz>", "square")
    emb = te.get_input_embeddings().weight
    cos = torch.nn.functional.cosine_similarity(emb[new], emb[cls_id], dim=0)
    assert float(cos) > 0.999
    assert tok("a <zz> square", add_special_tokens=False).input_ids[1] == new
