"""MSP-Podcast Test3 (paper Table VIII): its labels are not public; the challenge scores a
submitted ``FileName,EmoClass`` CSV. Two steps around crab-infer (local/test3.sh runs all):

    python local/test3.py prepare --corpus_dir MSP --out_dir data/test3
        wav.scp of every Test3 file (from the labels' Split_Set column, or Partitions.txt)
    python local/test3.py submission --wav_scp data/test3/wav.scp --results R.tsv --out test3.csv
        crab-infer's predictions as MSP's class letters (A S H U F D C N), checked complete:
        every Test3 file exactly once, nothing else; a failed utterance is an error.
"""

import argparse
import csv
import json
import os
import sys

from prepare_data import CLASS_OF, fail, find_labels, find_partitions, read_labels, read_partitions, wav_name

from crab.fileio import write_atomic, write_text_atomic

LETTER_OF = {name: letter for letter, name in CLASS_OF.items()}
TEST3 = "test3"


def test3_files(corpus_dir, labels=None, partitions=None):
    """Sorted Test3 file names: from the partition file when there is one (it lists files
    whose labels are withheld), else from the labels' Split_Set column."""
    labels = find_labels(corpus_dir, labels)
    columns, rows = read_labels(labels)
    partitions_file = find_partitions(corpus_dir, partitions, labels, columns)
    if partitions_file:
        names = {n for n, part in read_partitions(partitions_file).items() if part.lower() == TEST3}
    else:
        names = {wav_name(row["FileName"]) for row in rows if row["Split_Set"].lower() == TEST3}
    if not names:
        fail(f"no Test3 file in {partitions_file or labels}: this release does not list Test3")
    return sorted(names)


def prepare(args):
    names = test3_files(args.corpus_dir, args.labels or None, args.partitions or None)
    audio = os.path.join(args.corpus_dir, "Audios")
    missing = [n for n in names if not os.path.isfile(os.path.join(audio, n))]
    if missing:
        fail(f"{len(missing)} of {len(names)} Test3 files missing from {audio}, e.g. {missing[:5]}")
    os.makedirs(args.out_dir, exist_ok=True)
    lines = (f"{n[: -len('.wav')]} {os.path.abspath(os.path.join(audio, n))}\n" for n in names)
    write_text_atomic(os.path.join(args.out_dir, "wav.scp"), "".join(lines))
    print(f"Test3: {len(names)} files in {args.out_dir}/wav.scp")


def read_predictions(path):
    """utt -> predicted class name, from crab-infer's TSV or JSONL results."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith((".jsonl", ".json", ".ndjson")):
            return {r["id"]: r["predicted"] for r in map(json.loads, filter(str.strip, f))}
        # crab-infer's TSV quotes nothing: a transcript that opens a quote (ASR output such as
        # '"I told him, no') would otherwise read on into the lines after it, losing them
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return {row["id"]: row["predicted"] for row in rows}


def submission(args):
    with open(args.wav_scp, encoding="utf-8") as f:
        utts = [line.split()[0] for line in f if line.strip()]
    predicted = read_predictions(args.results)
    missing = [u for u in utts if u not in predicted]
    extra = sorted(set(predicted) - set(utts))
    unknown = sorted({c for c in predicted.values() if c not in LETTER_OF})
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} Test3 file(s) without a prediction, e.g. {missing[:5]} "
            f"(crab-infer lists failures in {args.results}.errors)"
        )
    if extra:
        problems.append(f"{len(extra)} prediction(s) of files not in {args.wav_scp}, e.g. {extra[:5]}")
    if unknown:
        problems.append(f"classes that are not MSP-Podcast's eight: {unknown} (a model of another corpus?)")
    if problems:
        fail(f"{args.results}: not a complete Test3 submission:\n  " + "\n  ".join(problems))

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["FileName", "EmoClass"])
            writer.writerows((f"{u}.wav", LETTER_OF[predicted[u]]) for u in utts)

    write_atomic(args.out, write)
    print(f"{args.out}: {len(utts)} Test3 predictions (FileName,EmoClass), every file once")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    steps = parser.add_subparsers(dest="step", required=True)
    prep = steps.add_parser("prepare", help="wav.scp of the Test3 files")
    prep.add_argument("--corpus_dir", required=True, help="the MSP-Podcast directory (Audios/, Labels/)")
    prep.add_argument("--out_dir", required=True)
    prep.add_argument("--labels", default="", help="labels CSV (default: Labels/labels_consensus.csv)")
    prep.add_argument(
        "--partitions", default="", help="Partitions.txt to use instead of the Split_Set column"
    )
    sub = steps.add_parser("submission", help="crab-infer results -> FileName,EmoClass CSV")
    sub.add_argument("--wav_scp", required=True, help="the Test3 wav.scp of 'prepare'")
    sub.add_argument("--results", required=True, help="crab-infer's --out (TSV or JSONL)")
    sub.add_argument("--out", required=True, help="the CSV to submit")
    args = parser.parse_args(argv)
    prepare(args) if args.step == "prepare" else submission(args)


if __name__ == "__main__":
    sys.exit(main())
