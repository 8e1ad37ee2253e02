"""Text side of a base model: prompt encoding for scoring, placeholder tokens."""

from __future__ import annotations

import torch

from cns_ray.errors import InputError


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states and attention masks for ``prompts``.

    Returns hidden [P, T, D] float32 and mask [P, T] (1 = real token, 0 = padding). Prompts are encoded one at a
    time with max-length padding, so a prompt's embedding never depends on which other prompts share its batch
    (sharded scoring gives bit-identical masks to single-process scoring).
    """
    if not prompts:
        raise InputError("no prompts to encode: give at least one caption or calibration prompt")
    device = next(text_encoder.parameters()).device
    hidden, masks = [], []
    for p in prompts:
        tok = tokenizer(
            p, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        ids = tok.input_ids.to(device)  # [1, T]
        out = text_encoder(ids)[0]  # [1, T, D]
        hidden.append(out.float().cpu())
        masks.append(tok.attention_mask)
    return torch.cat(hidden), torch.cat(masks)


def token_norms(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Per-feature L2 norms of each prompt's embedding over its real tokens: [P, D]."""
    from cns_ray.neurons import feature_norms

    hidden, mask = encode_prompts(tokenizer, text_encoder, prompts)
    return feature_norms(hidden, mask)


def register_placeholders(tokenizer, tokens) -> None:
    """Add placeholder tokens to ``tokenizer``, each one position, the space before it included (``lstrip``).

    A byte-level BPE would otherwise make that space a token of its own ("Ġ", never seen in training); serving's
    :func:`cns_ray.serve.prompts.tokenize_with_placeholders` drops that space the same way, so both give the same ids.
    """
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False, special=True) for t in tokens])


def word_ids_in_caption(tokenizer, word: str) -> list[int]:
    """Token ids of ``word`` as it appears inside a caption (after a space).

    Byte-level BPE tokenizers spell a word differently at the start of a text (``shape`` -> ``s,hape``) than after a
    space (``Ġshape``); a class word sits inside the caption, so its ids are read from ``"a " + word`` minus the
    ids of ``"a"``."""
    prefix = tokenizer("a", add_special_tokens=False).input_ids
    ids = tokenizer("a " + word.strip(), add_special_tokens=False).input_ids
    if ids[: len(prefix)] != prefix:  # a tokenizer that merges across the space: fall back to the bare word
        return tokenizer(word.strip(), add_special_tokens=False).input_ids
    return ids[len(prefix):]


def add_placeholder_token(tokenizer, text_encoder, token: str, init_word: str | None = None) -> int:
    """Add ``token`` to the tokenizer and grow the embedding table; initialise it from ``init_word``'s tokens.

    Returns the new token id. Refuses a token that already exists or an init word that tokenizes to nothing.
    """
    if token in tokenizer.get_vocab():
        raise InputError(f"placeholder token {token!r} already exists in the tokenizer: choose a new one, e.g. '<{token.strip('<>')}2>'")
    init_ids: list[int] = []
    if init_word:
        init_ids = word_ids_in_caption(tokenizer, init_word)
        if not init_ids:
            raise InputError(f"class word {init_word!r} tokenizes to nothing: give a real word, e.g. 'dog'")
    register_placeholders(tokenizer, [token])
    new_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new row is set below
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        if init_ids:
            emb[new_id] = emb[init_ids].mean(0)
        else:
            emb[new_id] = emb[: new_id].mean(0)
    return new_id
