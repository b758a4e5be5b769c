"""Kaldi-style data dirs for IEMOCAP: four classes, every fold of both protocols.

Labels: the categorical label of each turn in Session<N>/dialog/EmoEvaluation/<dialog>.txt
(ang -> angry, hap and exc -> happy, neu -> neutral, sad -> sad; the other labels are
left out). Transcripts: Session<N>/dialog/transcriptions/<dialog>.txt. Audio:
Session<N>/sentences/wav/<dialog>/<utt>.wav. A speaker is a session and a gender
(Ses01F_impro01_M013 is Ses01M). Folds, as <out_dir>/<fold>/{train,valid,test}:

    session<N>  test: Session N (both speakers); valid: one speaker of the next
                session (female after odd N, male after even N); train: the other 7
    Ses0<N><G>  test: that speaker; valid: the other speaker of Session N;
                train: the other 4 sessions

    python local/prepare_data.py --corpus_dir IEMOCAP_full_release --out_dir data
"""

import argparse
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass

from crab import cli
from crab.cli import str2bool
from crab.datadir import check_fold, write_data_dir
from crab.dataprep import C1_AS_CP1252, DataPrepError, count_table, read_text

CLASSES = ("angry", "happy", "neutral", "sad")
CLASS_OF = {"ang": "angry", "hap": "happy", "exc": "happy", "neu": "neutral", "sad": "sad"}
# Every categorical label IEMOCAP uses; anything else is a malformed line.
LABELS = set(CLASS_OF) | {"fru", "sur", "fea", "dis", "oth", "xxx"}
# Published four-class counts of the whole corpus (improvised and scripted).
EXPECTED_COUNTS = {"angry": 1103, "happy": 1636, "neutral": 1708, "sad": 1084}
SESSIONS = (1, 2, 3, 4, 5)
DIALOG = re.compile(r"Ses0[1-5][FM]_(impro|script)[0-9a-z_]*")
EVALUATION_LINE = re.compile(r"\[[^\]]*\]\s+(\S+)\s+(\S+)(\s+\[.*\])?\s*")
TRANSCRIPT_LINE = re.compile(r"(\S+)\s+\[[^\]]*\]:\s*(.*)")
TABLES = {  # Kaldi table -> Utterance attribute
    "wav.scp": "wav",
    "text": "text",
    "utt2emo": "emo",
    "utt2spk": "speaker",
    "utt2gender": "gender",
    "utt2session": "session",
    "utt2type": "type",
}


@dataclass
class Utterance:
    utt: str
    dialog: str
    session: str  # Session1 .. Session5
    speaker: str  # Ses01F .. Ses05M
    gender: str  # f | m
    type: str  # improvised | scripted
    emo: str
    text: str | None = None
    wav: str | None = None


def fail(message):
    sys.exit(f"ERROR: {message}")


def read_lines(path):
    """Lines of a text file: UTF-8 (BOM allowed), else Windows-1252 with a warning. Lines
    end at LF (CRLF too) only: str.splitlines also ends them at U+0085, which is how a
    Windows-1252 ellipsis reads once decoded as Latin-1."""
    if not os.path.isfile(path):
        fail(f"missing file {path}")
    return [line.removesuffix("\r") for line in read_text(path).split("\n")]


def dialogs(corpus_dir, session):
    """(dialog, evaluation file) of a session, from the EmoEvaluation file names."""
    folder = os.path.join(corpus_dir, f"Session{session}", "dialog", "EmoEvaluation")
    if not os.path.isdir(folder):
        fail(f"missing {folder}: is {corpus_dir} IEMOCAP_full_release (with Session1..Session5)?")
    names = sorted(
        n[:-4]
        for n in os.listdir(folder)
        if n.endswith(".txt") and n.startswith(f"Ses0{session}") and DIALOG.fullmatch(n[:-4])
    )
    if not names:
        fail(f"no Ses0{session}*.txt evaluation files in {folder}")
    return [(n, os.path.join(folder, n + ".txt")) for n in names]


def read_evaluation(path, dialog, session):
    """Four-class utterances of one EmoEvaluation file.

    Turn lines read "[start - end]<TAB>utt<TAB>label<TAB>[v, a, d]"; the lines
    of each annotator (C-E1:, A-E1:, ...) and the header (%) are skipped.
    """
    seen, utts = set(), []
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.startswith("["):
            continue
        match = EVALUATION_LINE.fullmatch(line)
        where = f"{path}:{lineno}"
        if match is None or not match.group(1).startswith(dialog + "_") or match.group(2) not in LABELS:
            fail(
                f"{where}: malformed evaluation line "
                f"(want '[start - end]<TAB>{dialog}_...<TAB>label<TAB>[v, a, d]'): {line!r}"
            )
        utt, label = match.group(1), match.group(2)
        if utt in seen:
            fail(f"{where}: utterance {utt} labelled twice")
        seen.add(utt)
        gender = utt.rsplit("_", 1)[1][:1]
        if gender not in ("F", "M"):
            fail(f"{where}: cannot tell the speaker of {utt} (want ..._F<n> or ..._M<n>)")
        if label in CLASS_OF:
            utts.append(
                Utterance(
                    utt=utt,
                    dialog=dialog,
                    session=f"Session{session}",
                    speaker=f"Ses0{session}{gender}",
                    gender=gender.lower(),
                    type="improvised" if "_impro" in dialog else "scripted",
                    emo=CLASS_OF[label],
                )
            )
    return utts


def check_counts(utts, corpus_dir):
    found = Counter(u.emo for u in utts)
    if dict(found) != EXPECTED_COUNTS:
        rows = "\n".join(f"  {c:8s} expected {EXPECTED_COUNTS[c]:5d}, found {found[c]:5d}" for c in CLASSES)
        fail(
            f"{corpus_dir}: the four-class counts differ from IEMOCAP's published ones:\n{rows}\n"
            f"  total    expected {sum(EXPECTED_COUNTS.values()):5d}, found {len(utts):5d}\n"
            "Is the copy complete (Session1..Session5, every EmoEvaluation file)? "
            "On a partial copy, run stage 1 with --data_opts '--check_counts false'."
        )


def add_transcripts(utts, corpus_dir):
    """Fill in ``text``; lines of ids that are not labelled utterances are ignored."""
    by_dialog = {}
    for u in utts:
        by_dialog.setdefault((u.session, u.dialog), {})[u.utt] = u
    for (session, dialog), wanted in by_dialog.items():
        path = os.path.join(corpus_dir, session, "dialog", "transcriptions", dialog + ".txt")
        for lineno, line in enumerate(read_lines(path), 1):
            # C1 controls first: U+0085 (an ellipsis, see read_lines) is whitespace to strip(),
            # split() and the pattern's \s, which would drop one at either end
            line = line.translate(C1_AS_CP1252)
            utt = (line.split(maxsplit=1) or [""])[0]
            if utt not in wanted:
                continue
            match = TRANSCRIPT_LINE.fullmatch(line.strip())
            if match is None:
                fail(f"{path}:{lineno}: malformed transcript line (want '{utt} [start-end]: text'): {line!r}")
            if wanted[utt].text is not None:
                fail(f"{path}:{lineno}: second transcript for {utt}")
            wanted[utt].text = " ".join(match.group(2).split())
        missing = [u for u in wanted.values() if u.text is None]
        if missing:
            names = ", ".join(u.utt for u in missing[:10])
            fail(f"{path}: no transcript line for {len(missing)} labelled utterance(s): {names}")


def add_audio(utts, corpus_dir):
    """Fill in ``wav`` (absolute paths). A missing file is counted and named here and
    left to stage 3, which stops on it or, with --policy skip, leaves it out and counts it."""
    root = os.path.abspath(corpus_dir)
    for u in utts:
        u.wav = os.path.join(root, u.session, "sentences", "wav", u.dialog, u.utt + ".wav")
    missing = [u.wav for u in utts if not os.path.isfile(u.wav)]
    if missing:
        listing = "\n".join(f"  {path}" for path in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        if len(missing) == len(utts):
            fail(
                f"none of the {len(utts)} labelled utterances has its wav:\n{listing}{more}\n"
                f"Is {corpus_dir} a whole IEMOCAP_full_release, with Session<N>/sentences/wav/ unpacked?"
            )
        print(
            f"WARNING: {len(missing)} of {len(utts)} labelled utterance(s) have no audio:\n{listing}{more}\n"
            "Stage 3 stops on them (--policy skip leaves them out and counts them)."
        )


def folds():
    """Fold name -> speakers of (train, valid, test), for both protocols."""
    speakers = {f"Ses0{s}{g}" for s in SESSIONS for g in "FM"}
    result = {}
    for s in SESSIONS:
        test = {f"Ses0{s}F", f"Ses0{s}M"}
        valid = {f"Ses0{s % 5 + 1}{'F' if s % 2 else 'M'}"}
        result[f"session{s}"] = (speakers - test - valid, valid, test)
    for s in SESSIONS:
        for g, other in (("F", "M"), ("M", "F")):
            result[f"Ses0{s}{g}"] = (
                speakers - {f"Ses0{s}F", f"Ses0{s}M"},
                {f"Ses0{s}{other}"},
                {f"Ses0{s}{g}"},
            )
    return result


def by_utt(utts):
    return {u.utt: {"emo": u.emo} for u in utts}


@cli.entry_point  # a write error (a file where --out_dir goes) is one line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus_dir", required=True, help="IEMOCAP_full_release")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument(
        "--improvised_only",
        type=str2bool,
        default=False,
        help="keep the improvised dialogs only (true|false)",
    )
    parser.add_argument(
        "--check_counts",
        type=str2bool,
        default=True,
        help="stop unless the whole corpus has the published 4-class counts (true|false)",
    )
    args = parser.parse_args(argv)

    utts = [
        u
        for s in SESSIONS
        for dialog, path in dialogs(args.corpus_dir, s)
        for u in read_evaluation(path, dialog, s)
    ]
    if args.check_counts:  # on the whole corpus, so that it also guards --improvised_only
        check_counts(utts, args.corpus_dir)
    print("Four-class utterances of the corpus, by dialog type:")
    print(
        count_table({t: by_utt(u for u in utts if u.type == t) for t in ("improvised", "scripted")}, CLASSES)
    )
    if args.improvised_only:
        utts = [u for u in utts if u.type == "improvised"]
    add_transcripts(utts, args.corpus_dir)
    add_audio(utts, args.corpus_dir)

    for fold, speakers in folds().items():
        splits = {}
        for split, chosen in zip(("train", "valid", "test"), speakers, strict=True):
            splits[split] = [u for u in utts if u.speaker in chosen]
            if not splits[split]:
                fail(f"fold {fold}: no utterances of speaker(s) {', '.join(sorted(chosen))} for {split}")
        try:
            check_fold(
                {split: {u.utt: u.speaker for u in us} for split, us in splits.items()},
                [u.utt for u in utts],
                f"fold {fold}",
            )
        except DataPrepError as err:
            fail(str(err))
        for split, us in splits.items():
            write_data_dir(
                os.path.join(args.out_dir, fold, split),
                {name: {u.utt: getattr(u, attribute) for u in us} for name, attribute in TABLES.items()},
            )
        print(f"fold {fold}: valid {','.join(sorted(speakers[1]))}, test {','.join(sorted(speakers[2]))}")
        print(count_table({split: by_utt(us) for split, us in splits.items()}, CLASSES))


if __name__ == "__main__":
    main()
