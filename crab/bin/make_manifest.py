"""Turn a Kaldi-style data directory into a checked JSON manifest.

A data directory holds ``wav.scp`` (utt path), ``text`` (utt transcript),
``utt2emo`` and ``utt2spk``; any other ``utt2<field>`` file (utt2gender,
utt2session, ...) becomes a manifest field too. Every utterance is checked
(``crab.dataprep``) and the per-class counts are printed (under ``--fold``'s name,
when given, and the column names; ``--table_header false``: the row alone, as stage 3
prints the splits of a fold after the first). With ``--text_only
true`` the utterances are those of ``utt2emo``, ``wav.scp`` is not read, and
every entry has ``"wav": null`` and ``"duration": null`` (text models only). With
``--modality speech`` (data for a speech-only model) transcripts are not required: a
data directory without ``text``, or an empty transcript, gives ``"text": ""``
(bimodal and text models reject empty transcripts).

Every class of ``--classes`` needs training examples: with ``--fold`` (stage 3), a
``train`` data directory left without an utterance of some class (none there, or
``--policy skip`` removed the last ones) is an error naming the class; another split
without one gets a warning (its scores leave the class out, ``crab.metrics``).

Beside the manifest ``M``, ``M.provenance`` (JSON) records the text source, the ASR
model of ``text.asr`` (from ``text.asr.model``, written by ``crab.bin.transcribe``)
and the data directory: training copies it into the run folder (``crab.provenance``). The old
manifest is removed before it is written, and the new one written after it: a run killed
between them leaves no manifest, never one beside the record of another.
``M.skipped`` lists the utterances that ``--policy skip`` left out (``utt``, ``kind``,
``message``, tab-separated, with a header; ``crab.dataprep.write_skipped``); the log names
the first 10. It is written before the manifest (so it is there when stage 3 then stops
for want of a kept utterance or class), and removed by a run that finds no bad utterance.

    python -m crab.bin.make_manifest --data_dir data/train --data_root DB \\
        --classes angry,happy,neutral,sad --out data/train.json [--fold main] [--policy skip] \\
        [--text_source gold|asr] [--text_only true] [--modality bimodal|speech|text] \\
        [--peak_cache data/audio_peaks.json]

With ``--peak_cache`` the audio samples read for the amplitude checks are read once: the
peaks are kept there by file, size and modification time (``crab.dataprep.PeakCache``;
stage 3 keeps one for all folds and splits).
"""

import argparse
import logging
import os
import sys
from collections import Counter

from crab import cli
from crab.cli import str2bool
from crab.datadir import TEXT_FILES, read_data_dir, tables_read
from crab.dataprep import (
    POLICIES,
    DataPrepError,
    PeakCache,
    classes_problem,
    count_table,
    missing_classes,
    skipped_list,
    validate,
    write_manifest,
)
from crab.provenance import write_manifest_provenance

MODALITIES = ("bimodal", "speech", "text")  # as crab.model.MODALITIES, whose import loads torch


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument(
        "--data_dir", required=True, help="Kaldi-style data directory (wav.scp, text, utt2emo, ...)"
    )
    parser.add_argument("--data_root", required=True, help="written as {data_root} in the manifest")
    parser.add_argument("--classes", required=True, help="comma-separated labels, in order")
    parser.add_argument("--out", required=True, help="the manifest (JSON) to write")
    parser.add_argument("--fold", help="the fold of the data directory, named above its counts (stage 3)")
    parser.add_argument(
        "--table_header",
        type=str2bool,
        default=True,
        help="false: the counts' row alone, without the fold's name and the column names above it",
    )
    parser.add_argument(
        "--policy",
        choices=POLICIES,
        default="error",
        help="what a bad utterance does: stop (error), or is left out, counted and listed in "
        "OUT.skipped (skip)",
    )
    parser.add_argument(
        "--text_source",
        choices=sorted(TEXT_FILES),
        default="gold",
        help="transcripts from the data dir's text (gold) or text.asr (asr)",
    )
    parser.add_argument(
        "--min_samples",
        type=int,
        default=400,
        help="shortest usable audio, in 16 kHz samples (the encoder's receptive field)",
    )
    parser.add_argument(
        "--text_only",
        type=str2bool,
        default=False,
        help="true: no audio (wav.scp not read; wav and duration null): for text models",
    )
    parser.add_argument(
        "--modality",
        choices=MODALITIES,
        default="bimodal",
        help="the model the data is for: speech (transcripts not required: a missing text file "
        'or an empty transcript gives text ""), bimodal or text (transcripts required)',
    )
    parser.add_argument(
        "--peak_cache",
        help="JSON file of the peak amplitudes read before, by audio file (made when missing)",
    )
    args = parser.parse_args(argv)
    if args.modality == "speech" and args.text_only:
        parser.error("--modality speech needs audio: it cannot go with --text_only true")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    classes = args.classes.split(",")
    problem = classes_problem(classes)
    if problem:
        parser.error(f"--classes {args.classes!r}: {problem}")
    name = os.path.basename(os.path.normpath(args.data_dir))
    require_text = args.modality != "speech"
    check_out(parser, args)
    entries = read_data_dir(args.data_dir, args.text_source, args.text_only)
    where = f"{args.fold}/{name}" if args.fold else name  # in messages: the fold's split
    peaks = PeakCache(args.peak_cache) if args.peak_cache else None
    try:
        kept = validate(
            entries,
            classes,
            args.policy,
            where,
            args.min_samples,
            require_text=require_text,
            skipped_file=skipped_list(args.out),
            peaks=peaks,
        )
    finally:  # what was read is kept, whatever stops the checks
        if peaks:
            peaks.save()
    if not kept:
        sys.exit(f"ERROR: {where}: no usable utterances")
    check_classes(kept, entries, classes, args)
    # the old manifest goes first, the new one comes last: a kill between leaves none (the
    # next stage asks for stage 3), never a manifest beside the provenance of another
    if os.path.lexists(args.out):
        os.remove(args.out)
    write_manifest_provenance(args.out, args.data_dir, args.text_source, require_text, args.text_only)
    write_manifest(kept, args.out, args.data_root)
    table = count_table({name: kept}, classes)
    if not args.table_header:
        table = table.split("\n", 1)[1]
    elif args.fold:
        print(f"fold {args.fold}:")
    print(table)


TRAIN_SPLIT = "train"  # the split stage 5 trains on (ser.sh: data/<fold>/train.json)


def check_out(parser, args):
    """Refuse an ``--out`` that is a directory, or one of the files of the data directory (or
    a file beside the manifest) that would be replaced: its tables are the input."""
    if os.path.isdir(args.out):
        parser.error(f"--out {args.out} is a directory: give the manifest's file name (e.g. train.json)")
    tables = [
        os.path.join(args.data_dir, n) for n in tables_read(args.data_dir, args.text_source, args.text_only)
    ]
    for path in (args.out, skipped_list(args.out), args.out + ".provenance"):
        for table in tables:
            if os.path.exists(path) and os.path.samefile(path, table):
                parser.error(
                    f"--out {args.out} would replace {table}, an input: write the manifest elsewhere"
                )
    beside = os.path.realpath(os.path.dirname(os.path.abspath(args.out))) == os.path.realpath(args.data_dir)
    if beside and os.path.basename(args.out).startswith("utt2"):
        parser.error(
            f"--out {args.out}: in {args.data_dir}, a utt2* file is read as a table: write it elsewhere"
        )


def check_classes(kept, entries, classes, args):
    """Stop (``--fold``'s train split) or warn (any other) where ``kept`` has no
    utterance of some class; one that ``--policy skip`` emptied is said so."""
    missing = missing_classes(kept, classes)
    if not missing:
        return
    before = Counter(entry.get("emo") for entry in entries.values())
    named = ", ".join(
        f"'{c}'" + (f" (all {before[c]} skipped as bad input)" if before[c] else "") for c in missing
    )
    split = os.path.basename(os.path.normpath(args.data_dir))
    where = f"fold {args.fold}: {args.data_dir}" if args.fold else args.data_dir
    if args.fold and split == TRAIN_SPLIT:
        raise DataPrepError(
            f"{where} has no utterance of {named}, but {args.out} is the fold's training manifest and "
            "every class of --classes needs training examples: add some, or leave the class out of --classes"
        )
    logging.warning("%s has no utterance of %s: scores on it leave the class out", where, named)


if __name__ == "__main__":
    main()
