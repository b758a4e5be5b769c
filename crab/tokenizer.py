"""Build a small RoBERTa-style byte-level BPE tokenizer offline from text.

For tiny randomly initialised text encoders (tests, the mini recipe): real
recipes use the pretrained encoder's own tokenizer.
"""

import argparse
import os

from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast

from crab import cli
from crab.data import load_manifest

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4
# Byte-level BPE keeps all 256 byte tokens whatever vocab_size asks for.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def build_bpe_tokenizer(texts, out_dir, vocab_size=1000, model_max_length=128):
    """Train on ``texts`` and save a ``RobertaTokenizerFast`` to ``out_dir``."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIAL_TOKENS
    )
    vocab = bpe.get_vocab()
    os.makedirs(out_dir, exist_ok=True)
    bpe.save_model(out_dir)
    with open(os.path.join(out_dir, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f if line.strip() and not line.startswith("#")]
    tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description="Build a BPE tokenizer from manifest transcripts.")
    parser.add_argument("--manifest", required=True, action="append", help="repeatable")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--vocab_size", type=int, default=1000)
    args = parser.parse_args(argv)
    texts = []
    for path in args.manifest:  # read as training reads them (control characters cleaned)
        texts += [entry["text"] for entry in load_manifest(path).values()]
    tokenizer = build_bpe_tokenizer(texts, args.out_dir, args.vocab_size)
    print(f"Tokenizer with {len(tokenizer)} tokens from {len(texts)} transcripts in {args.out_dir}")
    if args.vocab_size < MIN_VOCAB_SIZE:
        print(
            f"Note: vocab_size {args.vocab_size} (ser.sh --bpe_vocab_size) is below the byte-level BPE "
            f"minimum of {MIN_VOCAB_SIZE} (256 bytes and {len(SPECIAL_TOKENS)} special tokens): "
            f"the tokenizer has {len(tokenizer)}"
        )


if __name__ == "__main__":
    main()
