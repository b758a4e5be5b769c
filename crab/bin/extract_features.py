"""Extract frozen-encoder states into the feature cache (``crab.features``).

    python -m crab.bin.extract_features hparams.yaml --feature_cache=DIR \\
        [--manifests a.json b.json ...] [--batch_size 8] [--shard_size 256] \\
        [--shard_mib 1024] [--dtype float32] [--device DEVICE] [--key=value ...]

Takes the same yaml and overrides as training (the encoders must be frozen:
``freeze_speech_encoder`` / ``freeze_text_encoder``, or, for the speech encoder, only
its top layers fine-tuned: ``finetune_top_speech_layers``); manifests default to the
yaml's train, valid and test manifests. Re-running extracts only what is
missing; training with ``--feature_cache=DIR`` then reads the cache. The device is
training's: ``--device``, else the first GPU where torch sees one, else the CPU. A shard's states
are held in memory until it is written: at most ``--shard_size`` utterances, and it is
written early once they reach ``--shard_mib`` MiB (all 25 hidden states of WavLM Large
are about 5 MB per second of audio in float32).
"""

import argparse
import logging
import sys

from crab import cli
from crab.experiment import check_device, parse_and_load, run_device
from crab.features import DTYPES, SHARD_MIB, extract

logger = cli.module_logger(__name__, __spec__)


@cli.entry_point
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False, formatter_class=cli.HelpFormatter)
    own.add_argument(
        "--manifests",
        nargs="+",
        default=None,
        help="manifests to extract (default: the yaml's train, valid and test manifests)",
    )
    own.add_argument("--batch_size", type=int, default=8, help="utterances per encoder batch (default: 8)")
    own.add_argument(
        "--shard_size", type=int, default=256, help="utterances per shard at most (default: 256)"
    )
    own.add_argument(
        "--shard_mib",
        type=float,
        default=SHARD_MIB,
        help="a shard is written once its states, held in memory until then, reach this many MiB "
        f"(default: {SHARD_MIB:g})",
    )
    own.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="storage type; float32, the default, keeps cached training identical to uncached",
    )
    cli.exit_on_run_help(argv, __doc__, own)
    args, rest = own.parse_known_args(argv)
    _, run_opts, _, hparams = parse_and_load(rest)
    check_device(run_opts, hparams)
    if not hparams.get("feature_cache"):
        sys.exit("Set --feature_cache=DIR: where to write the cache.")
    manifests = args.manifests or [hparams[k] for k in ("train_manifest", "valid_manifest", "test_manifest")]
    count = extract(
        hparams["model"],
        manifests,
        hparams["feature_cache"],
        hparams["data_root"],
        hparams["max_duration"],
        args.batch_size,
        args.shard_size,
        args.dtype,
        run_device(run_opts, hparams),
        args.shard_mib,
    )
    logger.info("Extracted %d utterance(s) into %s", count, hparams["feature_cache"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
