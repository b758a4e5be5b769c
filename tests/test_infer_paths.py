"""crab-infer takes a package wherever it lies: a Hugging Face cache snapshot (each file a
link to its blob), moved or copied (resumed by content, as the --text file); it says how
many utterances it classified from their first max_duration seconds, and names --asr_model
for an ASR model it cannot load."""

import hashlib
import json
import os
import shutil

import pytest
import soundfile as sf

from crab.encoders import ModelSourceError
from crab.inference import CrabClassifier
from tests.test_infer_safety import gold
from tests.test_inference import cli, data, tone, trained, write_inputs  # noqa: F401 - fixtures


def hf_snapshot(model_dir, repo):
    """``model_dir`` as ``huggingface-cli download`` leaves it in the hub's cache: each file in
    ``repo/blobs/<sha256>``, relatively linked from ``repo/snapshots/abc123``."""
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    for base, _, files in os.walk(model_dir):
        for name in files:
            content = open(os.path.join(base, name), "rb").read()
            blob = blobs / hashlib.sha256(content).hexdigest()
            blob.write_bytes(content)
            link = snapshot / os.path.relpath(os.path.join(base, name), model_dir)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


def test_a_hub_cache_snapshot_and_a_moved_package_are_the_same_model(
    trained,  # noqa: F811
    data,  # noqa: F811
    tmp_path,
    capsys,
    caplog,
):
    write_inputs(tmp_path, data)
    snapshot = hf_snapshot(trained[2], tmp_path / "models--me--crab")
    assert os.path.islink(snapshot / "hyperparams.yaml")
    out = tmp_path / "r.tsv"
    assert gold(snapshot, tmp_path, out) == 0
    results = out.read_text()
    assert gold(trained[2], tmp_path, tmp_path / "plain.tsv") == 0
    assert (tmp_path / "plain.tsv").read_text() == results
    digest = json.loads((tmp_path / "plain.tsv.model").read_text())["model_sha256"]
    assert json.loads((tmp_path / "r.tsv.model").read_text())["model_sha256"] == digest

    # the same package elsewhere resumes the same results, and says where it is now
    moved = tmp_path / "moved"
    shutil.copytree(trained[2], moved)
    caplog.set_level("INFO")
    capsys.readouterr()
    assert gold(moved, tmp_path, out) == 0
    assert "(0 now, 3 before)" in capsys.readouterr().out and out.read_text() == results
    assert f'the --model path changed ("{snapshot}" then, "{moved}" now)' in caplog.text

    # a link to a file the package does not record: crab-infer refuses it as loading does
    (tmp_path / "outside.json").write_text("{}")
    os.symlink(tmp_path / "outside.json", snapshot / "text_encoder" / "extra.json")
    message = gold(snapshot, tmp_path, tmp_path / "new.tsv")
    assert "extra.json is not a file of this package" in message and "\n" not in message
    assert not (tmp_path / "new.tsv").exists()


def test_utterances_longer_than_max_duration_are_counted(trained, data, tmp_path, caplog):  # noqa: F811
    write_inputs(tmp_path, data)
    sf.write(tmp_path / "long.wav", tone(13.0, 200), 16000)
    (tmp_path / "long.scp").write_text(f"good_a {data}/test_angry_0.wav\nlong {tmp_path}/long.wav\n")
    with open(tmp_path / "text", "a") as f:
        f.write("long I feel angry today\n")
    caplog.set_level("INFO")
    assert gold(trained[2], tmp_path, tmp_path / "r.tsv", wav_scp="long.scp") == 0
    assert "1 utterances longer than 12 s: classified from their first 12 s" in caplog.text
    assert len((tmp_path / "r.tsv").read_text().splitlines()) == 3


def test_an_asr_model_that_cannot_be_loaded_is_named_by_its_option(trained, data, tmp_path):  # noqa: F811
    write_inputs(tmp_path, data)
    out = tmp_path / "r.tsv"
    args = ["--model", trained[2], "--wav_scp", tmp_path / "wav.scp", "--text_mode", "asr", "--out", out]
    message = cli(*args, "--asr_model", "nobody/no-such-asr")
    assert message.startswith("ERROR: --asr_model: 'nobody/no-such-asr' is neither a local directory")
    assert "HF_HUB_OFFLINE is set" in message and "\n" not in message and not out.exists()

    classifier = CrabClassifier.from_hparams(source=str(trained[2]))
    with pytest.raises(ModelSourceError, match=r"^model: 'nobody/no-such-asr' is neither"):
        classifier.load_asr("nobody/no-such-asr")


def test_an_out_that_cannot_be_written_is_one_line_naming_it(trained, data, tmp_path):  # noqa: F811
    write_inputs(tmp_path, data)
    (tmp_path / "a_file").write_text("not a folder\n")
    blocker = tmp_path / "a_file"
    for out in (blocker / "r.tsv", blocker / "sub" / "r.tsv"):
        message = gold(trained[2], tmp_path, out)
        folder = os.path.dirname(out)
        assert message == f"ERROR: cannot create output folder {folder}: a file named {blocker} is in the way"
    if os.path.isdir("/proc/self"):  # unwritable even for root
        message = gold(trained[2], tmp_path, "/proc/self/r.tsv")
        assert message.startswith("ERROR: cannot write /proc/self/r.tsv.lock (") and "\n" not in message


@pytest.mark.parametrize("value", ["twelve", "30s", "-5", ".nan", "true"])
def test_a_max_duration_that_is_not_seconds_is_one_line(trained, data, tmp_path, value):  # noqa: F811
    """An edited package: max_duration is read (to count the long utterances) before loading
    checks the package's files, and a string there was a TypeError traceback."""
    write_inputs(tmp_path, data)
    model = tmp_path / "model"
    shutil.copytree(trained[2], model)
    yaml_file = model / "hyperparams.yaml"
    text = yaml_file.read_text(encoding="utf-8")
    assert "\nmax_duration: " in text
    yaml_file.write_text(
        "\n".join(
            f"max_duration: {value}" if line.startswith("max_duration:") else line
            for line in text.split("\n")
        ),
        encoding="utf-8",
    )
    message = gold(model, tmp_path, tmp_path / "r.tsv")
    assert message.startswith(f"ERROR: {yaml_file}: max_duration is ") and "not seconds" in message
    assert "\n" not in message and not (tmp_path / "r.tsv").exists()


def test_a_pipe_or_folder_given_as_wav_scp_or_text_is_named_as_such(trained, data, tmp_path):  # noqa: F811
    """Not "no such file" for a path that is there: the shell's <(...) gives a pipe, which a
    run would read twice (its digest, then its lines), so it is refused, and said to be one."""
    write_inputs(tmp_path, data)
    os.mkfifo(tmp_path / "fifo")
    out = tmp_path / "r.tsv"
    for option, reason in (
        ("wav_scp", "not a regular file (a pipe, e.g. the shell's <(...)"),
        ("text", "not a regular file (a pipe, e.g. the shell's <(...)"),
    ):
        message = gold(trained[2], tmp_path, out, **{option: "fifo"})
        assert message.startswith(f"ERROR: --{option} {tmp_path / 'fifo'}: {reason}") and "\n" not in message
    message = gold(trained[2], tmp_path, out, text=".")
    assert message == f"ERROR: --text {tmp_path / '.'}: a directory, not a file"
    assert gold(trained[2], tmp_path, out, text="nowhere").endswith(": no such file") and not out.exists()
