"""Build a small RoBERTa-style byte-level BPE tokenizer offline from text.

For tiny randomly initialised text encoders (tests, the mini recipe): real
recipes use the pretrained encoder's own tokenizer.
"""

import argparse
import os
import shutil

from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast

from crab import cli
from crab.data import load_manifest
from crab.fileio import fsync, make_dirs, replace_dir, temp_path
from crab.locking import beside_lock

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0-4
# Byte-level BPE keeps all 256 byte tokens whatever vocab_size asks for.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# what a build writes (and older transformers wrote): a rebuild replaces a folder of these only
TOKENIZER_FILES = {
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def build_bpe_tokenizer(texts, out_dir, vocab_size=1000, model_max_length=128):
    """Train on ``texts`` and save a ``RobertaTokenizerFast`` to ``out_dir``.

    Its files are written into a hidden folder beside ``out_dir``, renamed into place once all
    are on disk: a build that fails (a full disk, a quota) leaves the old tokenizer whole, not
    its files mixed with cut-off new ones that would load as another tokenizer. An ``out_dir``
    holding other files is refused: the rebuild replaces the folder whole. Two builds of one
    ``out_dir`` at once (stage 3 of two experiments) take turns: ``<out_dir>.lock``."""
    with beside_lock(out_dir, "tokenizer", wait=True):
        return _build(texts, out_dir, vocab_size, model_max_length)


def _build(texts, out_dir, vocab_size, model_max_length):
    """``build_bpe_tokenizer``'s work, under its lock."""
    others = sorted(set(os.listdir(out_dir)) - TOKENIZER_FILES) if os.path.isdir(out_dir) else []
    if others:
        raise cli.UserError(
            f"--out_dir {out_dir} holds files that are not a tokenizer's ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}): a rebuild replaces the folder whole; give the "
            "tokenizer a folder of its own"
        )
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(texts),
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,  # off a terminal its progress bar is blank lines in stage 3's log
    )
    vocab = bpe.get_vocab()
    out_dir = os.path.normpath(out_dir)
    make_dirs(os.path.dirname(out_dir) or os.curdir)
    tmp = temp_path(out_dir)
    try:
        os.makedirs(tmp)
        bpe.save_model(tmp)
        with open(os.path.join(tmp, "merges.txt"), encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f if line.strip() and not line.startswith("#")]
        tokenizer = RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)
        tokenizer.save_pretrained(tmp)
        for name in os.listdir(tmp):
            fsync(os.path.join(tmp, name))
    except BaseException as err:  # a KeyboardInterrupt too
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception):  # the tokenizers library's write errors are plain Exceptions
            raise cli.UserError(
                f"cannot build the tokenizer {out_dir} ({cli.first_line(err)}): it is left as it was"
            ) from err
        raise
    replace_dir(tmp, out_dir, temp_path(out_dir))
    fsync(os.path.dirname(os.path.abspath(out_dir)))
    return tokenizer


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Build a BPE tokenizer from manifest transcripts.", formatter_class=cli.HelpFormatter
    )
    parser.add_argument(
        "--manifest", required=True, action="append", help="manifest whose transcripts it learns; repeatable"
    )
    parser.add_argument("--out_dir", required=True, help="the tokenizer's directory (replaced)")
    parser.add_argument(
        "--vocab_size",
        type=int,
        default=1000,
        help="size of the vocabulary, bytes and special tokens included",
    )
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
