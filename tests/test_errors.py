"""User errors are one line naming the key or option, the path and the fix: no traceback."""

import os
import signal
import subprocess
import sys
import time

import pytest

from crab.encoders import ModelSourceError, from_source
from crab.experiment import check_compile
from crab.runconfig import ConfigError, parse_arguments
from tests.test_brain import corpus_options
from tests.test_run_config import CLASSES, CONFIG, assert_one_line_error, command, write_tone_corpus


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors_data")
    write_tone_corpus(root, root, {"train": 1, "valid": 1}, CLASSES)
    return root


def train(data, *opts, folder=None):
    return command(
        "crab.bin.train",
        CONFIG,
        *corpus_options(data, f"{data}/exp", folder),
        "--number_of_epochs=1",
        *opts,
    )


def test_missing_tokenizer_directory(data):
    result = train(data, folder="data/main")
    assert_one_line_error(
        result, "tokenizer_source: no directory data/main/tokenizer; build it with stage 3 --bpe_vocab_size N"
    )


def test_hub_id_that_cannot_be_fetched(data):
    result = train(data, "--speech_encoder_source=openai/whisper-bse")
    line = assert_one_line_error(
        result,
        "speech_encoder_source: 'openai/whisper-bse' is neither a local directory "
        "nor a model on the hub that could be loaded: ",
    )
    assert len(line) < 400


def test_missing_local_model_directory(data):
    result = train(data, "--speech_encoder_source=../models/wavlm-large")
    assert_one_line_error(
        result, "speech_encoder_source: no directory ../models/wavlm-large; give a local directory"
    )


def test_missing_manifest_says_which_stage_writes_it(data, tmp_path):
    (tmp_path / "tokenizer").symlink_to(data / "tokenizer")
    result = train(data, folder=tmp_path)
    assert_one_line_error(result, f"{tmp_path}/train.json not found: run stage 3 (manifests) first")


def test_unknown_override(data):
    result = train(data, "--hidden_dimm=16")
    assert_one_line_error(
        result, "override --hidden_dimm: no top-level key 'hidden_dimm' in conf/crab_tiny.yaml"
    )


def test_data_parallel_is_refused_for_ddp(data):
    result = train(data, "--data_parallel_backend")
    message = "--data_parallel_backend (DataParallel) is not supported"
    assert_one_line_error(result, message, "run.sh --ngpu N")


def test_compile_needs_dynamic_shapes(data):
    result = train(data, "--compile")
    message = "--compile without --compile_using_dynamic_shape_tracing compiles for one padded length"
    assert_one_line_error(result, message, "add --compile_using_dynamic_shape_tracing")


def test_compile_without_its_compiler_is_refused_before_training(data, tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no_such_g++"))  # inductor's compiler for CPU code
    result = train(data, "--compile", "--compile_using_dynamic_shape_tracing")
    message = "--compile: torch.compile on cpu builds C++ code, and no C++ compiler is found"
    assert_one_line_error(result, message, "name it with CXX, or leave --compile out")


def test_jit_of_every_module_is_refused(data):
    result = train(data, "--jit")
    assert_one_line_error(result, "--jit scripts every module", "leave --jit out")


@pytest.mark.parametrize(
    ("opts", "hparams", "refused"),
    [
        (["--compile", "--compile_using_dynamic_shape_tracing"], {}, None),
        ([], {"compile": True}, "--compile without"),  # a run option can be a key of the yaml
        (["--compile"], {"compile_using_dynamic_shape_tracing": True}, None),
        (["--jit", "--jit_module_keys", "wce"], {}, None),  # modules that TorchScript can script
        ([], {"jit": True}, "--jit scripts every module"),
        ([], {}, None),
    ],
)
def test_compile_and_jit_options(opts, hparams, refused, monkeypatch):
    monkeypatch.setattr("crab.experiment.compiler_missing", lambda device: None)  # tests/test_compilers.py
    _, run_opts, _ = parse_arguments(["hparams.yaml", *opts])
    if refused is None:
        check_compile(run_opts, hparams)
    else:
        with pytest.raises(ConfigError, match=refused):
            check_compile(run_opts, hparams)


def test_transcribe_model_typo_writes_nothing(data, tmp_path):
    (tmp_path / "wav.scp").write_text(f"u1 {data}/train_sad_0.wav\n")
    result = command("crab.bin.transcribe", "--data_dir", tmp_path, "--model", "openai/whisper-tinyy")
    assert_one_line_error(
        result, "--model: 'openai/whisper-tinyy' is neither a local directory nor a model on the hub"
    )
    # no text.asr.model naming the typo (the data directory's lock stays, unlocked)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "wav.scp"]


def test_from_source_names_the_argument(tmp_path):
    with pytest.raises(ModelSourceError, match=r"^tokenizer: no directory /nowhere/tok; build it"):
        from_source("tokenizer", "/nowhere/tok", lambda s: s)
    (tmp_path / "empty").mkdir()
    from transformers import AutoConfig

    with pytest.raises(ModelSourceError, match=rf"^x: the directory {tmp_path / 'empty'} cannot be loaded: "):
        from_source("x", str(tmp_path / "empty"), AutoConfig.from_pretrained)


def test_ctrl_c_ends_a_command_with_one_line_and_status_130(monkeypatch, capsys):
    from crab import cli

    @cli.entry_point
    def main(argv=None):
        raise KeyboardInterrupt  # Ctrl-C midway

    monkeypatch.setattr(sys, "argv", ["/home/me/venv/bin/crab-infer"])
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 130  # as the shell reports a command killed by SIGINT
    assert capsys.readouterr().err == "crab-infer: interrupted\n"  # one line, no traceback


@pytest.mark.parametrize(
    ("argv0", "command"), [("-m", True), ("/home/me/venv/bin/crab-infer", True), ("notebook.py", False)]
)
def test_ctrl_c_while_a_command_loads_its_libraries_is_one_line(argv0, command):
    """Before the command's entry point runs (its imports take seconds): python -m crab...
    (argv[0] is "-m" while the package loads) and crab-infer say one line; a program that
    imports crab as a library keeps Python's traceback."""
    interrupted = f"import sys; sys.argv[0] = {argv0!r}; import crab; raise KeyboardInterrupt"
    result = subprocess.run([sys.executable, "-c", interrupted], capture_output=True, text=True, timeout=60)
    assert result.returncode in (130, -signal.SIGINT)  # killed by SIGINT, as Python ends on Ctrl-C
    if command:
        assert result.stderr.count("\n") == 1 and result.stderr.endswith(": interrupted\n"), result.stderr
    else:
        assert result.stderr.startswith("Traceback") and "KeyboardInterrupt" in result.stderr


def test_sigterm_ends_a_command_after_its_clean_up_with_one_line_and_status_143(monkeypatch, capsys):
    from crab import cli

    cleaned_up = []

    @cli.entry_point
    def main(argv=None):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's time limit midway
            time.sleep(30)  # the handler raises here
        finally:
            cleaned_up.append(True)  # as the feature cache saves its index

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(sys, "argv", ["/home/me/venv/bin/crab-infer"])
    started = time.monotonic()
    with pytest.raises(SystemExit) as stop:
        main([])
    assert time.monotonic() - started < 20 and cleaned_up == [True]
    assert stop.value.code == 143  # as the shell reports a command killed by SIGTERM
    assert capsys.readouterr().err == "crab-infer: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_interrupted_command_is_named_as_it_was_called(monkeypatch):
    from crab.cli import command_name

    def main(argv=None):
        pass

    monkeypatch.setattr(sys, "argv", ["/home/me/venv/bin/crab-infer", "--model", "m"])  # a console script
    assert command_name(main) == "crab-infer"
    monkeypatch.setattr(sys, "argv", [__file__, "--model", "m"])  # python -m: the module's file
    assert command_name(main) == __spec__.name  # this module, as python -m names it
