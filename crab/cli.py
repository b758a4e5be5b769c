"""Small helpers shared by the command-line tools and the recipes' Python scripts."""

import argparse
import functools
import logging
import os
import sys

from crab.signals import EXIT_STATUS, Terminated, raise_on_sigterm

# the advice of the errors that refuse to train a run on (crab.runconfig, crab.provenance)
NEW_RUN = (
    "train a new run (the recipe: another --tag, or --exp_dir in a sweep; by hand: another output_folder)"
)


class CappedWarnings:
    """``warning`` logs the first ``limit`` calls through ``logger`` one by one and counts the
    rest (``unlogged``): a large corpus can fail thousands of utterances, each of them listed in
    a file besides, which the log need not repeat line by line."""

    def __init__(self, logger, limit):
        self.logger, self.limit, self.count = logger, limit, 0

    def warning(self, message, *args):
        self.count += 1
        if self.count <= self.limit:
            self.logger.warning(message, *args)

    @property
    def unlogged(self):
        """The warnings counted but not logged."""
        return max(self.count - self.limit, 0)


class UserError(Exception):
    """A problem with what the user gave (a file, an option, a configuration, a model
    source) that its message explains: an ``entry_point`` prints it as one
    ``ERROR: <message>`` on stderr, without a traceback, and exits with status 1."""


def entry_point(main):
    """Decorate a command's ``main(argv=None)``: a ``UserError`` raised anywhere below
    it ends the command with ``ERROR: <message>`` and exit status 1 (``SystemExit``
    with that message), instead of a traceback; Ctrl-C ends it with one line and status
    130, as the shell reports a command killed by SIGINT, and SIGTERM (``crab.signals``)
    likewise with status 143, after the clean-up that Ctrl-C runs. Every ``python -m crab...``
    command has it, so none needs its own try/except."""

    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            with raise_on_sigterm():
                return main(argv)
        except UserError as err:
            sys.exit(f"ERROR: {err}")
        except Terminated:
            print(f"{command_name(main)}: terminated (SIGTERM)", file=sys.stderr)
            sys.exit(EXIT_STATUS)
        except KeyboardInterrupt:
            print(f"{command_name(main)}: interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapped


def module_logger(name, spec):
    """The logger of a command's module (its ``__name__`` and ``__spec__``): named after the
    module, ``crab.bin.train``, also when ``python -m`` runs it as ``__main__``."""
    return logging.getLogger(spec.name if spec else name)


def command_name(main):
    """How the user called ``main``'s command: ``crab-infer`` for a console script, the
    module for ``python -m`` (whose ``__module__`` is then ``__main__``)."""
    program = os.path.basename(sys.argv[0])
    if program.startswith("crab") and not program.endswith(".py"):
        return program
    spec = main.__globals__.get("__spec__")
    return spec.name if spec else main.__module__


def first_line(err):
    """``<type>: <first line of its message>`` of the exception ``err``."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The ``--help`` of the command-line tools: the description as written, and each option's
    default, where it has one and its help does not say it already."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default in ("", [])
        if unset or "default" in help_text or not action.option_strings:
            return help_text
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        elif isinstance(default, bool):  # the Kaldi-style true / false the options take (str2bool)
            default = str(default).lower()
        return f"{help_text} (default: {str(default).replace('%', '%%')})".lstrip()


def add_command(subparsers, name, help_text):
    """A subcommand of ``subparsers`` (``add_subparsers``) whose ``--help`` is ``HelpFormatter``'s."""
    return subparsers.add_parser(name, formatter_class=HelpFormatter, help=help_text)


def str2bool(value):
    """argparse type for the Kaldi-style ``true`` / ``false`` option values."""
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")
    return value.lower() == "true"


def exit_on_run_help(argv, doc, own=None):
    """``-h`` or ``--help`` in ``argv`` of a command that takes a yaml and SpeechBrain's run
    options (``crab.bin.train``, ``crab.bin.evaluate``): print its ``doc`` (its usage first),
    the options of its own parser ``own`` (an ``argparse.ArgumentParser`` without help), then
    SpeechBrain's run options, and exit 0. SpeechBrain's own help names the script
    ``train.py`` and says nothing of the command or its ``--key=value`` overrides."""
    if "-h" not in argv and "--help" not in argv:
        return
    from speechbrain.utils.run_opts import RunOptions

    def options(parser):
        return parser.format_help().split("\noptions:\n", 1)[-1]

    own_text = f"\n\nOptions of this command:\n{options(own).rstrip()}" if own is not None else ""
    run_text = options(RunOptions._create_parser())
    print(
        f"{doc.strip()}{own_text}\n\nSpeechBrain's run options, given like the overrides (--device=cuda:0):\n"
        f"{run_text}"
    )
    sys.exit(0)
