"""Where a run's transcripts came from: gold, or ASR and which ASR model.

Stage 2 (``crab.bin.transcribe``) writes ``text.asr`` and the model that made it,
``text.asr.model``, into each data directory. Stage 3 (``crab.bin.make_manifest``)
records, beside each manifest ``M``, ``M.provenance`` (JSON): the text source, the
ASR model read from ``text.asr.model``, the data directory and a digest of each
table read from it; reading the manifest (``crab.data``) checks that the tables
have not changed since (``check_tables``: stage 1 or 2 rerun without stage 3), in the
data directory where it lies from the manifest (a recipe's data/ moved or copied whole).
Training copies the
training manifest's record into the run folder (``text_source.json``), where
``crab.report record_training`` (``train_info.json``), ``crab.bin.score`` (results
files) and ``crab.bin.package`` read it: what the run was trained on, not what a
later command line says.
"""

import hashlib
import json
import os

from crab.asr import recorded_model
from crab.cli import NEW_RUN, UserError
from crab.fileio import make_dirs, write_text_atomic

SIDECAR = ".provenance"
RUN_FILE = "text_source.json"
ASR_MARKER = "text.asr.model"
UNKNOWN = {"text_source": "unknown", "asr_model": None}


class ProvenanceError(UserError, ValueError):
    """Recorded and given transcript sources disagree."""


def sidecar(manifest):
    return os.fspath(manifest) + SIDECAR


def asr_model_of(data_dir):
    """The ASR model stage 2 recorded in ``data_dir/text.asr.model``, or None."""
    return recorded_model(os.path.join(data_dir, ASR_MARKER)) or None


def write_manifest_provenance(manifest, data_dir, text_source, transcripts_required=True, text_only=False):
    """Write ``manifest``'s sidecar; returns the record."""
    record = {
        "text_source": text_source,
        "asr_model": asr_model_of(data_dir) if text_source == "asr" else None,
        "transcripts_required": transcripts_required,
        "data_dir": os.path.abspath(data_dir),
        "data_dir_from_manifest": os.path.relpath(data_dir, os.path.dirname(os.path.abspath(manifest))),
        "text_only": text_only,
        "tables": _table_digests(data_dir, text_source, text_only),
    }
    _write_json(sidecar(manifest), record)
    return record


def check_tables(manifest):
    """A ``ProvenanceError`` where a table of the data directory ``manifest`` was made
    from is no longer what it was (changed, added or removed): the manifest is stale.
    Nothing to check without a record of the tables (a manifest made before it was
    recorded, or another way) or where the data directory is no longer there."""
    record = read_manifest_provenance(manifest) or {}
    data_dir, before = _recorded_data_dir(manifest, record), record.get("tables")
    if before is None or not os.path.isdir(data_dir):
        return
    now = _table_digests(data_dir, record["text_source"], record.get("text_only", False))
    changed = sorted(name for name in set(before) | set(now) if before.get(name) != now.get(name))
    if changed:
        raise ProvenanceError(
            f"{manifest} is older than its data: {', '.join(os.path.join(data_dir, n) for n in changed)} "
            "changed after stage 3 made it (data prep or ASR rerun): run stage 3 again (--stage 3)"
        )


def _recorded_data_dir(manifest, record):
    """The data directory ``manifest`` was made from: where it lies from the manifest, as when
    it was made (both moved or copied together: a copy's manifest is checked against the copy's
    tables, not the original's), else where it was."""
    relative = record.get("data_dir_from_manifest")
    if relative is not None:
        beside = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(manifest)), relative))
        if os.path.isdir(beside):
            return beside
    return record.get("data_dir")


def _table_digests(data_dir, text_source, text_only):
    from crab.datadir import tables_read  # crab.datadir imports crab.dataprep: only when needed

    names = tables_read(data_dir, text_source, text_only)
    return {name: file_digest(os.path.join(data_dir, name)) for name in names}


def read_manifest_provenance(manifest):
    """The sidecar of ``manifest``, or None (a manifest made another way)."""
    return _read_json(sidecar(manifest))


def read_run_provenance(run_dir):
    """The run's ``text_source.json``, or None (trained before it was recorded)."""
    return _read_json(os.path.join(run_dir, RUN_FILE))


def record_run_provenance(
    output_folder, train_manifest, write=True, tokenizer_sha256=None, valid_manifest=None, resumed=False
):
    """Copy the training manifest's transcript source into the run folder (every
    invocation of a run, so a resumed one too), with the digest of the text encoder's
    tokenizer (None: no text branch) and of the training and validation manifests. A
    run resumed (``resumed``: it has a checkpoint) on transcripts from another source,
    with another tokenizer, or on manifests that changed since it started (stage 3 run
    again on other data) is an error. Returns the record."""
    record = read_manifest_provenance(train_manifest) or dict(UNKNOWN)
    record = {
        "text_source": record.get("text_source", "unknown"),
        "asr_model": record.get("asr_model"),
        "train_manifest": os.path.abspath(train_manifest),
        "tokenizer_sha256": tokenizer_sha256,
        "manifests_sha256": {
            split: file_digest(path)
            for split, path in (("train", train_manifest), ("valid", valid_manifest))
            if path is not None
        },
    }
    before = read_run_provenance(output_folder)
    check_tokenizer(output_folder, tokenizer_sha256, before)
    if (
        before
        and before.get("text_source") != "unknown"
        and (
            (before.get("text_source"), before.get("asr_model"))
            != (record["text_source"], record["asr_model"])
        )
    ):
        raise ProvenanceError(
            f"{os.path.join(output_folder, RUN_FILE)}: the run was trained on {describe(before)}, but "
            f"{train_manifest} now holds {describe(record)}: {NEW_RUN}"
        )
    if resumed:
        _check_manifests(output_folder, before, record, {"train": train_manifest, "valid": valid_manifest})
    if write:
        _write_json(os.path.join(output_folder, RUN_FILE), record)
    return record


def _check_manifests(run_dir, before, record, paths):
    """A ``ProvenanceError`` when a manifest a resumed run was trained on has changed (a run
    recorded without the digests is not checked): its weights would train on other data."""
    trained = (before or {}).get("manifests_sha256") or {}
    now = record["manifests_sha256"]
    changed = [split for split in trained if split in now and trained[split] != now[split]]
    if changed:
        names = ", ".join(f"{paths[split]} ({split})" for split in changed)
        raise ProvenanceError(
            f"{os.path.join(run_dir, RUN_FILE)}: {names} changed since the run started (stage 3 run "
            "again on other data?): resuming would train its weights on other utterances or labels; "
            + NEW_RUN
        )


def file_digest(path):
    """The sha256 of ``path``'s bytes, in hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_tokenizer(run_dir, tokenizer_sha256, record=None):
    """A ``ProvenanceError`` when the run in ``run_dir`` was trained with another tokenizer
    than ``tokenizer_sha256`` (``crab.features.tokenizer_digest``): token ids are part of
    the trained model, and a fold's BPE tokenizer is rebuilt by each stage 3. ``record``:
    the run's record, read here when not given; a run recorded without one is not checked."""
    record = read_run_provenance(run_dir) if record is None else record
    trained = (record or {}).get("tokenizer_sha256")
    if trained and tokenizer_sha256 and trained != tokenizer_sha256:
        raise ProvenanceError(
            f"{os.path.join(run_dir, RUN_FILE)}: the run was trained with another tokenizer than it reads "
            f"now (sha256 {trained[:12]}... then, {tokenizer_sha256[:12]}... now; was stage 3 run again?): "
            f"{NEW_RUN}, or restore the tokenizer it was trained with (the same stage 3 options)"
        )


def trained_text_source(record):
    """``(text_source, asr_model)`` the run of ``record`` (its ``text_source.json``) read:
    ``("none", None)`` for a model without a text branch (recorded tokenizer None), which
    read none of its manifest's transcripts."""
    record = record or UNKNOWN
    if "tokenizer_sha256" in record and record["tokenizer_sha256"] is None:
        return "none", None
    return record.get("text_source", "unknown"), record.get("asr_model")


def describe(record):
    """``gold transcripts``, ``ASR transcripts of 'M'``, ..."""
    source = (record or {}).get("text_source", "unknown")
    if source == "asr":
        return f"ASR transcripts of '{record.get('asr_model') or 'an unrecorded model'}'"
    return f"{source} transcripts"


def package_text_source(run_dir, text_source=None, asr_model=None):
    """``(text_source, asr_model)`` of the run in ``run_dir`` for its package: the
    recorded ones; a given ``text_source`` or ``asr_model`` must agree with them
    (without a record, the given ones, as before the record existed)."""
    where = os.path.join(run_dir, RUN_FILE)
    source, model = trained_text_source(read_run_provenance(run_dir))
    if source == "unknown":
        source = text_source or "unknown"
        return source, (asr_model or None) if source == "asr" else None
    if text_source and text_source != source:
        fix = (
            "it has no text branch: leave it out"
            if source == "none"
            else f"leave it out or give --text_source {source}"
        )
        raise ProvenanceError(
            f"--text_source {text_source} contradicts the run's text_source: {source} ({where}); {fix}"
        )
    if source == "asr" and asr_model and model and asr_model != model:
        raise ProvenanceError(
            f"--asr_model {asr_model} contradicts the run's asr_model: {model} ({where}): "
            "the run was trained on that model's transcripts; leave --asr_model out"
        )
    return source, (model or asr_model or None) if source == "asr" else None


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path, record):
    make_dirs(os.path.dirname(os.path.abspath(path)))
    write_text_atomic(path, json.dumps(record, indent=2))
