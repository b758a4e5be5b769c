"""Generate the synthetic emotion-labelled mini corpus with espeak-ng.

Every speaker (an espeak-ng voice with a seeded base pitch and rate) says every
sentence of local/sentences.py once, with emotion-dependent prosody (pitch,
pitch range, rate, amplitude) plus seeded random variation. For demonstrating
and smoke-testing the pipeline only: it is not an SER benchmark.

    python local/generate_corpus.py --out_dir data/corpus --seed 42 --jobs 2

Writes DIR/wav/<utt>.wav (16 kHz mono 16-bit PCM) and DIR/metadata.csv.
Deterministic for a given seed whatever --jobs; existing wavs are kept, so an
interrupted run resumes (use a fresh DIR after changing --seed).
"""

import argparse
import collections
import concurrent.futures
import csv
import io
import os
import shutil
import subprocess
import sys
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf
import torch
import torchaudio
from sentences import SENTENCES

from crab.fileio import remove_temps, write_atomic
from crab.locking import folder_lock

EMOTIONS = ("angry", "happy", "neutral", "sad")
# espeak-ng voice+variant per speaker (spk01, spk02, ...); gender from the variant.
# "en-gb+<variant>" silently drops the variant: British English is "en+<variant>".
VOICES = (
    "en-us+m3",
    "en-us+f2",
    "en+m1",
    "en-gb-x-rp+f4",
    "en-gb-scotland+m4",
    "en-029+f3",
    "en-gb-x-gbclan+m6",
    "en-us-nyc+f1",
)
PARAMS = ("pitch", "range", "rate", "amplitude")
# (mean, sd) of each of PARAMS: espeak-ng -p (0-99), SSML <prosody range> (0-100),
# -s (words per minute), -a (0-200).
PROSODY = {
    "angry": ((55, 5), (80, 6), (195, 10), (150, 10)),
    "happy": ((70, 5), (92, 4), (185, 10), (125, 10)),
    "neutral": ((48, 5), (45, 6), (165, 8), (100, 8)),
    "sad": ((28, 5), (15, 5), (125, 8), (65, 8)),
}
LIMITS = {"pitch": (0, 99), "range": (0, 100), "rate": (80, 400), "amplitude": (10, 200)}
SPEAKER_PITCH_OFFSET = 8  # speaker base pitch offset: uniform integer in +-8
SPEAKER_RATE_SCALE = 0.1  # speaker base rate: mean rate times uniform 1 +- 0.1
SAMPLE_RATE = 16000
SILENCE = 1e-3  # trim threshold (full scale 1)
MARGIN_S = 0.05  # silence kept at each end after trimming
FIELDS = ("utt_id", "speaker", "gender", "emotion", "text", "wav")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng processes")
    parser.add_argument("--speakers", type=int, default=6, help=f"1 to {len(VOICES)}")
    parser.add_argument(
        "--sentences_per_emotion",
        type=int,
        default=None,
        help="use only the first N sentences of each emotion (default: all)",
    )
    args = parser.parse_args()
    if not 1 <= args.speakers <= len(VOICES):
        parser.error(f"--speakers must be between 1 and {len(VOICES)}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    fewest = min(len(SENTENCES[e]) for e in EMOTIONS)
    if args.sentences_per_emotion is not None and not 1 <= args.sentences_per_emotion <= fewest:
        parser.error(f"--sentences_per_emotion must be between 1 and {fewest}")
    return args


def find_espeak():
    """Path of espeak-ng, or exit with how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        sys.exit(
            "ERROR: espeak-ng not found: install it (apt-get install espeak-ng) "
            "or run tools/install.sh, which installs it where it can"
        )
    return path


def draw_prosody(seed):
    """Seeded speaker bases and per-utterance variation for the whole voice/sentence grid.

    Drawn in a fixed order for every voice and sentence, so each utterance's
    parameters depend only on the seed (not on --jobs, --speakers or
    --sentences_per_emotion).
    """
    rng = np.random.default_rng(seed)
    pitch_offset = rng.integers(-SPEAKER_PITCH_OFFSET, SPEAKER_PITCH_OFFSET + 1, len(VOICES))
    rate_scale = rng.uniform(1 - SPEAKER_RATE_SCALE, 1 + SPEAKER_RATE_SCALE, len(VOICES))
    most = max(len(SENTENCES[e]) for e in EMOTIONS)
    noise = rng.standard_normal((len(VOICES), len(EMOTIONS), most, len(PARAMS)))
    return pitch_offset, rate_scale, noise


def utterance_prosody(emotion, pitch_offset, rate_scale, noise):
    """espeak-ng parameters of one utterance, as integers within LIMITS."""
    values = {}
    for name, (mean, sd), z in zip(PARAMS, PROSODY[emotion], noise, strict=True):
        mean = {"pitch": mean + pitch_offset, "rate": mean * rate_scale}.get(name, mean)
        low, high = LIMITS[name]
        values[name] = int(np.clip(round(mean + sd * z), low, high))
    return values


def plan(args):
    """All utterances: metadata fields plus voice and prosody, sorted by utt_id."""
    pitch_offset, rate_scale, noise = draw_prosody(args.seed)
    utts = []
    for s, voice in enumerate(VOICES[: args.speakers]):
        speaker, gender = f"spk{s + 1:02d}", voice.split("+")[1][0]
        for e, emotion in enumerate(EMOTIONS):
            for i, text in enumerate(SENTENCES[emotion][: args.sentences_per_emotion]):
                utt_id = f"{speaker}_{emotion}_{i:03d}"
                utts.append(
                    {
                        "utt_id": utt_id,
                        "speaker": speaker,
                        "gender": gender,
                        "emotion": emotion,
                        "text": text,
                        "wav": f"wav/{utt_id}.wav",
                        "voice": voice,
                        **utterance_prosody(emotion, pitch_offset[s], rate_scale[s], noise[s, e, i]),
                    }
                )
    return sorted(utts, key=lambda u: u["utt_id"])


def synthesize(espeak, utt):
    """Run espeak-ng on one utterance; returns (float64 samples, sample rate)."""
    ssml = f'<speak><prosody range="{utt["range"]}">{escape(utt["text"])}</prosody></speak>'
    cmd = [
        espeak,
        "-m",
        "-v",
        utt["voice"],
        "-p",
        str(utt["pitch"]),
        "-s",
        str(utt["rate"]),
        "-a",
        str(utt["amplitude"]),
        "--stdout",
        ssml,
    ]
    result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"{utt['utt_id']}: espeak-ng failed: {result.stderr.decode().strip()}")
    return sf.read(io.BytesIO(result.stdout), dtype="float64")


def trim(audio, sample_rate):
    """Cut leading/trailing near-silence, keeping MARGIN_S at each end."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE)
    if loud.size == 0:
        return audio
    margin = int(MARGIN_S * sample_rate)
    return audio[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def to_pcm16(audio, sample_rate):
    """Resample to SAMPLE_RATE and quantise to 16-bit integers."""
    resampled = torchaudio.functional.resample(torch.from_numpy(audio), sample_rate, SAMPLE_RATE)
    return np.clip(np.round(resampled.numpy() * 32768), -32768, 32767).astype(np.int16)


def made(out_dir, utt):
    path = os.path.join(out_dir, utt["wav"])
    return os.path.isfile(path) and os.path.getsize(path) > 0


def generate(espeak, out_dir, utt):
    """Create one utterance's wav unless it exists; returns (its duration in s, created)."""
    path = os.path.join(out_dir, utt["wav"])
    if made(out_dir, utt):
        return sf.info(path).duration, False
    audio, sample_rate = synthesize(espeak, utt)
    pcm = to_pcm16(trim(audio, sample_rate), sample_rate)
    write_atomic(path, lambda tmp: sf.write(tmp, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV"))
    return len(pcm) / SAMPLE_RATE, True


def write_metadata(utts, out_dir):
    """metadata.csv (FIELDS columns, rows in utts order)."""

    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(utts)

    write_atomic(os.path.join(out_dir, "metadata.csv"), write)


def summary(utts, results):
    """One line: utterances per emotion and per speaker, total duration, created/kept."""
    counts = {key: collections.Counter(u[key] for u in utts) for key in ("emotion", "speaker")}
    per = {key: " ".join(f"{k}={v}" for k, v in sorted(c.items())) for key, c in counts.items()}
    total = sum(duration for duration, _ in results)
    created = sum(new for _, new in results)
    return (
        f"{len(utts)} utterances ({created} created, {len(utts) - created} kept), "
        f"{total / 60:.1f} min; per emotion: {per['emotion']}; per speaker: {per['speaker']}"
    )


def main():
    args = parse_args()
    torch.set_num_threads(1)
    os.makedirs(os.path.join(args.out_dir, "wav"), exist_ok=True)
    utts = plan(args)
    # one generation of a corpus at a time: the temporary wavs a killed one left (SIGKILL, or
    # SIGTERM, which ends this script at once) are its, and removed
    with folder_lock(args.out_dir, "corpus", wait=True):
        remove_temps(os.path.join(args.out_dir, "wav"))
        # a corpus made elsewhere and copied complete (to a GPU machine, say) needs no espeak-ng
        espeak = None if all(made(args.out_dir, u) for u in utts) else find_espeak()
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda u: generate(espeak, args.out_dir, u), utts))
        write_metadata(utts, args.out_dir)
    print(summary(utts, results))


if __name__ == "__main__":
    main()
