"""The --help of the command-line tools: every option says what it is, with its default."""

import argparse
import importlib
import pkgutil

import pytest

import crab.bin
from crab import cli

COMMANDS = [f"crab.bin.{name}" for _, name, _ in sorted(pkgutil.iter_modules(crab.bin.__path__))]
COMMANDS += ["crab.tokenizer", "crab.report"]  # run by the recipes' stages
NO_OPTIONS_OF_ITS_OWN = {"crab.bin.train"}  # the yaml's keys and SpeechBrain's run options only


class Parsed(Exception):
    def __init__(self, parser):
        self.parser = parser


@pytest.fixture
def parser_of(monkeypatch):
    """The argparse parser a command builds: caught where it would parse (``main([])``)."""

    def caught(self, *args, **kwargs):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", caught)

    def _parser_of(command):
        try:
            importlib.import_module(command).main([])
        except Parsed as parsed:
            return parsed.parser
        raise AssertionError(f"{command} parsed no arguments")

    return _parser_of


def parsers(parser):
    """``parser`` and its subcommands' parsers."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def unset(default):
    return default is None or default is False or default in ("", [])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_described_with_its_default(parser_of, command):
    if command in NO_OPTIONS_OF_ITS_OWN:
        pytest.skip(f"{command} has no options of its own")
    parser = parser_of(command)
    for each in parsers(parser):
        formatter = each._get_formatter()
        for action in each._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            help_text = formatter._get_help_string(action)
            assert help_text, f"{command} ({each.prog}): {name} has no help"
            if action.option_strings and not unset(action.default):
                assert "default" in help_text, f"{command} ({each.prog}): {name}'s help names no default"


@pytest.mark.parametrize(
    "command, options",
    [
        ("extract_features", ["--manifests", "--batch_size", "--shard_size", "--shard_mib", "--dtype"]),
        ("embeddings", ["--projection", "--skip_if_current"]),
        ("evaluate", ["--skip_if_current"]),
    ],
)
def test_a_yaml_command_lists_its_own_options(capsys, command, options):
    """The commands that take a yaml print their own options besides SpeechBrain's run options."""
    module = importlib.import_module(f"crab.bin.{command}")
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    own = out.split("Options of this command:\n", 1)[1].split("SpeechBrain's run options", 1)[0]
    for option in options:
        assert f"  {option} " in own


def test_the_formatter_adds_a_default_the_help_does_not_name():
    parser = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8, help="utterances per batch")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--stage", type=int, default=0, help="first stage")
    parser.add_argument("--out", help="results file")
    text = " ".join(parser.format_help().split())
    assert "utterances per batch (default: 8)" in text
    assert "(default: cpu) (default" not in text
    assert "first stage (default: 0)" in text
    assert "results file (default" not in text
