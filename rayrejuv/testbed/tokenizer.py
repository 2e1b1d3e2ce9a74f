"""A character-level tokenizer built locally and saved as standard HF tokenizer files."""

from __future__ import annotations

from pathlib import Path

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
DEFAULT_ALPHABET = "0123456789+-*/=()?:;#., abcdefghijklmnopqrstuvwxyzQAT\\{}"


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET):
    """A PreTrainedTokenizerFast: one token per character, <bos> prepended."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({c: len(SPECIALS) + i for i, c in enumerate(chars)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def save_char_tokenizer(out_dir: str | Path, alphabet: str = DEFAULT_ALPHABET):
    tok = build_char_tokenizer(alphabet)
    tok.save_pretrained(out_dir)
    return tok
