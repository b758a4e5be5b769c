"""Small helpers shared by the command-line tools and the recipes' Python scripts."""

import argparse


def str2bool(value):
    """argparse type for the Kaldi-style ``true`` / ``false`` option values."""
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")
    return value.lower() == "true"
