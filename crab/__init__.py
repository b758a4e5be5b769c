"""Crab: bimodal speech emotion recognition with Multi Layer Contrastive Supervision."""

import os
import sys

__version__ = "0.1.0"


def _interrupted_while_loading(kind, value, traceback):
    """Ctrl-C while a command's libraries load (seconds, before crab.cli.entry_point runs):
    one line, as the command prints once it runs, not a traceback of the imports."""
    if not issubclass(kind, KeyboardInterrupt):
        return sys.__excepthook__(kind, value, traceback)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    print(f"{spec.name if spec else os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)


# a command: python -m crab.... (argv[0] is "-m" while its package loads), or crab-infer
if sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0] if sys.argv else "").startswith("crab-"):
    sys.excepthook = _interrupted_while_loading
