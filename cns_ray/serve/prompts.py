"""Per-request prompt encoding with one tenant's placeholder tokens, without touching the shared tokenizer.

The prompt is split on the tenant's own placeholders (exact strings such as ``<rex>``); every other piece is
tokenized as plain text by the base tokenizer (so another tenant's ``<tok>`` stays literal text). Each placeholder
takes one position whose input embedding is replaced by the tenant's vector for this call only
(:func:`cns_ray.layers.spliced_embeddings`, the splice the learner uses too). This gives the same ids as a tokenizer with the placeholder added (``add_tokens``), which is how the
learner tokenizes, and the same embeddings as a text encoder whose table holds the tenant's vector.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

from cns_ray.errors import InputError
from cns_ray.layers import spliced_embeddings


class PromptTooLongError(InputError):
    """A concept's placeholder falls past the text encoder's window: the image would be made without it."""


@dataclass
class TokenizedPrompt:
    """ids: int64 [T] (bos, content, eos, padding); placeholders: position -> placeholder token."""

    ids: torch.Tensor
    placeholders: dict[int, str]
    truncated: bool
    dropped: tuple[str, ...] = ()
    """Placeholders cut off by the window (their concept would be silently missing)."""
    content_tokens: int = 0
    """Tokens of the prompt before truncation (bos/eos not counted)."""


def tokenize_with_placeholders(tokenizer, prompt: str, tokens: Mapping[str, object]) -> TokenizedPrompt:
    """Tokenize ``prompt`` to ``model_max_length`` ids, marking where the tenant's placeholder ``tokens`` stand."""
    max_len = int(tokenizer.model_max_length)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    content: list[int] = []
    marks: dict[int, str] = {}
    names = sorted(tokens, key=len, reverse=True)  # longest first: "<rex2>" before "<rex>"
    pieces = re.split("(" + "|".join(re.escape(t) for t in names) + ")", prompt) if names else [prompt]
    for i, piece in enumerate(pieces):
        if i + 1 < len(pieces) and pieces[i + 1] in tokens:
            piece = piece.rstrip()  # the space before a placeholder is not a token (the learner's lstrip=True)
        if not piece:
            continue
        if piece in tokens:
            marks[len(content)] = piece
            content.append(bos)  # any valid id; its embedding is replaced
        else:
            content.extend(tokenizer(piece, add_special_tokens=False).input_ids)
    room = max_len - 2
    n_content = len(content)
    truncated = len(content) > room
    content = content[:room]
    ids = [bos, *content, eos] + [pad] * (room - len(content))
    placeholders = {pos + 1: tok for pos, tok in marks.items() if pos < room}
    dropped = tuple(tok for pos, tok in sorted(marks.items()) if pos >= room)
    return TokenizedPrompt(torch.tensor(ids, dtype=torch.int64), placeholders, truncated, dropped, n_content)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompt: str, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The text encoder's last hidden state [1, T, D] for ``prompt`` with the tenant's ``tokens`` resolved.

    Must run where no other request uses ``text_encoder`` at the same time (the generator's single worker).
    """
    tp = tokenize_with_placeholders(tokenizer, prompt, tokens)
    if tp.dropped:
        room = int(tokenizer.model_max_length) - 2
        raise PromptTooLongError(
            f"prompt is {tp.content_tokens} tokens, the text encoder reads {room}: concept token(s) "
            f"{', '.join(tp.dropped)} would be cut off and the image made without them; shorten the prompt or "
            "put the concept token earlier"
        )
    dim = text_encoder.get_input_embeddings().weight.shape[1]
    order = list(dict.fromkeys(tp.placeholders.values()))  # the distinct placeholders, in prompt order
    for tok in order:
        vec = tokens[tok]
        if vec.dim() != 1 or vec.shape[0] != dim:
            raise ValueError(f"embedding of {tok} has shape {tuple(vec.shape)}, the text encoder needs [{dim}]")
    slots = torch.full((1, tp.ids.numel()), -1, dtype=torch.int64)  # [1, T]: -1 keeps the table's row
    for pos, tok in tp.placeholders.items():
        slots[0, pos] = order.index(tok)
    device = next(text_encoder.parameters()).device
    with spliced_embeddings(text_encoder, slots, [tokens[t] for t in order]):
        out = text_encoder(tp.ids.unsqueeze(0).to(device))[0]  # [1, T, D]
    return out
