"""An offline byte-level tokenizer: 256 byte tokens + <pad> <bos> <eos>, built in code (no download).

Ids 0-255 are the UTF-8 bytes (through the GPT-2 byte-to-unicode map), 256 = <pad>, 257 = <bos>, 258 = <eos>.
Any text round-trips; the tiny models in conf/model/*_tiny.yaml use vocab_size = BYTE_VOCAB_SIZE.
"""
from __future__ import annotations

from functools import lru_cache

from ..config.schema import BYTE_VOCAB_SIZE

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


@lru_cache(maxsize=1)
def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of the bytes
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    vocab.update({PAD: 256, BOS: 257, EOS: 258})
    assert len(vocab) == BYTE_VOCAB_SIZE
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, BOS, EOS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
    wrapped.name_or_path = "byte"
    return wrapped


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the one tokenizers' ByteLevel uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))
