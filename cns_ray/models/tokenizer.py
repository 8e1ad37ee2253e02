"""Small byte-level BPE tokenizers for the built-in models, trained deterministically offline."""

from __future__ import annotations

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_bpe_tokenizer(corpus: list[str], vocab_size: int, model_max_length: int):
    """A CLIP-style fast tokenizer (lower-case byte-level BPE, start/end tokens, end token as padding) trained on
    ``corpus``. The same corpus gives the same tokenizer in every process."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS, model_max_length=model_max_length
    )
