"""Per-request placeholder resolution: the tenant's own tokens only, shared tokenizer/encoder untouched."""

import copy

import torch

from cns_ray.models.text import register_placeholders
from cns_ray.serve.prompts import encode_prompt, tokenize_with_placeholders


def test_ids_match_a_tokenizer_with_the_placeholder_added(tiny_base):
    tok = tiny_base.tokenizer
    ref = copy.deepcopy(tok)
    register_placeholders(ref, ["<rex>", "<rex2>"])
    for prompt in ["a photo of <rex> dog", "<rex>dog <rex2> on a <rex>", "no placeholder here"]:
        tp = tokenize_with_placeholders(tok, prompt, {"<rex>": 0, "<rex2>": 0})
        want = ref(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
        got = tp.ids.tolist()
        for pos, t in tp.placeholders.items():
            got[pos] = ref.convert_tokens_to_ids(t)
        assert got == want, prompt
    assert len(tok) == len(tok.get_vocab()) and "<rex>" not in tok.get_vocab()  # shared tokenizer unchanged


def test_another_tenants_token_stays_literal_text(tiny_base):
    tok = tiny_base.tokenizer
    tp = tokenize_with_placeholders(tok, "a photo of <other> dog", {"<rex>": 0})
    assert tp.placeholders == {}
    assert tp.ids.tolist() == tok("a photo of <other> dog", padding="max_length", max_length=tok.model_max_length).input_ids


def test_plain_prompt_encodes_like_the_text_encoder(tiny_base):
    tok, te = tiny_base.tokenizer, tiny_base.text_encoder
    ids = tok("a red car", padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        want = te(ids)[0]
    assert torch.equal(encode_prompt(tok, te, "a red car", {"<rex>": torch.zeros(te.config.hidden_size)}), want)


def test_placeholder_gets_the_tenants_embedding_and_nothing_leaks(tiny_base):
    tok, te = tiny_base.tokenizer, tiny_base.text_encoder
    vec = torch.randn(te.config.hidden_size, generator=torch.Generator().manual_seed(0))
    # reference: a private encoder copy whose table holds the vector under a real added token
    ref_tok, ref_te = copy.deepcopy(tok), copy.deepcopy(te)
    register_placeholders(ref_tok, ["<rex>"])
    ref_te.resize_token_embeddings(len(ref_tok))
    with torch.no_grad():
        ref_te.get_input_embeddings().weight[ref_tok.convert_tokens_to_ids("<rex>")] = vec
        want = ref_te(ref_tok("a photo of <rex> dog", padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids)[0]
    before = te.get_input_embeddings().weight.clone()
    got = encode_prompt(tok, te, "a photo of <rex> dog", {"<rex>": vec})
    assert torch.allclose(got, want, atol=1e-5)
    other = encode_prompt(tok, te, "a photo of <rex> dog", {"<rex>": vec * 0 + 1})
    assert not torch.allclose(got, other)
    assert torch.equal(te.get_input_embeddings().weight, before)
    assert not te.get_input_embeddings()._forward_hooks  # the per-request hook is gone
