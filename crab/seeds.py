"""Random streams of their own, drawn from a run's seed.

A recipe yaml seeds Python's, NumPy's and torch's generators with its ``seed``
(``speechbrain.utils.seed_everything``); the model's initial weights, dropout and the
speech encoder's time masking draw from them in turn. What draws from a stream of its
own instead (``stream_seed(seed, name)``) leaves that sequence as it is, so a setting
that adds or removes it changes nothing else of a run of the same seed.
"""

import numpy as np


def stream_seed(seed, name, bits=64):
    """A seed of ``bits`` bits for the stream ``name`` of a run of ``seed``
    (``numpy.random.SeedSequence`` of both): other names, or other seeds, give
    unrelated streams.

    >>> stream_seed(42, "leg fusion") == stream_seed(42, "leg fusion") != stream_seed(43, "leg fusion")
    True
    >>> stream_seed(42, "data order", bits=62) < 2**62
    True
    """
    state = np.random.SeedSequence([seed, *name.encode()]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> (64 - bits)
