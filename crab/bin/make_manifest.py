"""Turn a Kaldi-style data directory into a checked JSON manifest.

A data directory holds ``wav.scp`` (utt path), ``text`` (utt transcript),
``utt2emo`` and ``utt2spk``; any other ``utt2<field>`` file (utt2gender,
utt2session, ...) becomes a manifest field too. Every utterance is checked
(``crab.dataprep``) and the per-class counts are printed. With ``--text_only
true`` the utterances are those of ``utt2emo``, ``wav.scp`` is not read, and
every entry has ``"wav": null`` and ``"duration": null`` (text models only). With
``--modality speech`` (data for a speech-only model) transcripts are not required: a
data directory without ``text``, or an empty transcript, gives ``"text": ""``
(bimodal and text models reject empty transcripts).

Beside the manifest ``M``, ``M.provenance`` (JSON) records the text source, the ASR
model of ``text.asr`` (from ``text.asr.model``, written by ``crab.bin.transcribe``)
and the data directory: training copies it into the run folder (``crab.provenance``).

    python -m crab.bin.make_manifest --data_dir data/train --data_root DB \\
        --classes angry,happy,neutral,sad --out data/train.json [--policy skip] \\
        [--text_source gold|asr] [--text_only true] [--modality bimodal|speech|text]
"""

import argparse
import glob
import logging
import os
import sys

from crab import cli
from crab.cli import str2bool
from crab.dataprep import POLICIES, DataPrepError, count_table, read_text, validate, write_manifest
from crab.provenance import write_manifest_provenance

MODALITIES = ("bimodal", "speech", "text")  # as crab.model.MODALITIES, whose import loads torch


def read_table(path, required=True):
    """``utt value`` lines to a dict; the value is the rest of the line.

    UTF-8 (a leading byte-order mark is dropped); other bytes are a ``DataPrepError``
    naming the file, line and column (``crab.dataprep.read_text``).
    """
    table = {}
    if not os.path.isfile(path):
        if required:
            raise DataPrepError(f"missing {path}")
        return table
    # lines end at LF only: a stray CR inside a transcript is a control character, not a line break
    for lineno, line in enumerate(read_text(path, fallback=None).split("\n"), 1):
        if not line.strip():
            continue
        utt, value = (line.split(maxsplit=1) + [""])[:2]
        if utt in table:
            raise DataPrepError(f"{path}:{lineno}: duplicate utterance id '{utt}'")
        table[utt] = value.strip()
    return table


TEXT_FILES = {"gold": "text", "asr": "text.asr"}


def read_data_dir(data_dir, text_source="gold", text_only=False):
    """Entries keyed by the utterances of ``wav.scp``; every table must cover them.

    ``text_source`` picks the transcripts: ``text`` (gold) or ``text.asr``.
    ``text_only``: keyed by the utterances of ``utt2emo`` instead, each ``wav`` None.
    """
    if text_only:
        wavs = dict.fromkeys(read_table(os.path.join(data_dir, "utt2emo")))
    else:
        wavs = read_table(os.path.join(data_dir, "wav.scp"))
    text_file = os.path.join(data_dir, TEXT_FILES[text_source])
    if text_source == "asr" and not os.path.isfile(text_file):
        raise DataPrepError(f"missing {text_file}: run the transcription stage (--asr_model) first")
    tables = {"text": read_table(text_file, required=False)}
    for path in sorted(glob.glob(os.path.join(data_dir, "utt2*"))):
        tables[os.path.basename(path)[len("utt2"):]] = read_table(path)
    for field in ("emo", "spk"):
        if field not in tables:
            raise DataPrepError(f"{data_dir}: missing utt2{field}")
    entries = {}
    for utt, wav in wavs.items():
        entry = {"wav": wav}
        for field, table in tables.items():
            if field != "text" and utt not in table:
                raise DataPrepError(f"{data_dir}/utt2{field}: no entry for utterance '{utt}'")
            entry[field] = table.get(utt, "")
        entries[utt] = entry
    extra = sorted(set().union(*tables.values()) - set(wavs))
    if extra:
        listing = "utt2emo" if text_only else "wav.scp"
        raise DataPrepError(f"{data_dir}: utterances not in {listing}, e.g. '{extra[0]}' ({len(extra)} in all)")
    return entries


@cli.entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--data_root", required=True, help="written as {data_root} in the manifest")
    parser.add_argument("--classes", required=True, help="comma-separated labels, in order")
    parser.add_argument("--out", required=True)
    parser.add_argument("--policy", choices=POLICIES, default="error",
                        help="what a bad utterance does: stop (error) or is left out and counted (skip)")
    parser.add_argument("--text_source", choices=sorted(TEXT_FILES), default="gold",
                        help="transcripts from the data dir's text (gold) or text.asr (asr)")
    parser.add_argument("--min_samples", type=int, default=400,
                        help="shortest usable audio, in 16 kHz samples (the encoder's receptive field)")
    parser.add_argument("--text_only", type=str2bool, default=False,
                        help="true: no audio (wav.scp not read; wav and duration null): for text models")
    parser.add_argument("--modality", choices=MODALITIES, default="bimodal",
                        help="the model the data is for: speech (transcripts not required: a missing text file "
                             "or an empty transcript gives text \"\"), bimodal or text (transcripts required)")
    args = parser.parse_args(argv)
    if args.modality == "speech" and args.text_only:
        parser.error("--modality speech needs audio: it cannot go with --text_only true")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    classes = args.classes.split(",")
    name = os.path.basename(os.path.normpath(args.data_dir))
    require_text = args.modality != "speech"
    entries = read_data_dir(args.data_dir, args.text_source, args.text_only)
    kept = validate(entries, classes, args.policy, name, args.min_samples, require_text=require_text)
    if not kept:
        sys.exit(f"ERROR: {name}: no usable utterances")
    write_manifest(kept, args.out, args.data_root)
    write_manifest_provenance(args.out, args.data_dir, args.text_source, require_text)
    print(count_table({name: kept}, classes))


if __name__ == "__main__":
    main()
