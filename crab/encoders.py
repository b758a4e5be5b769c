"""Hugging Face speech and text encoders behind one small interface.

Both wrappers return ``(hidden, mask)``: ``hidden`` is ``(batch, time, dim)`` and
``mask`` is a boolean ``(batch, time)`` tensor, True on real frames/tokens. Every
model is loaded from a hub id or a local directory; ``pretrained=False`` builds it
from its config alone (random weights), which is how tests and the mini recipe run
offline.
"""

import logging
import os

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoTokenizer,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

from crab.cli import UserError
from crab.masks import device_mask, to_device

logger = logging.getLogger(__name__)
# transformers before 5.23 draws a LayerDrop number (torch.rand) in every layer of wav2vec 2.0-style
# encoders even in eval mode, which moves the CPU RNG: SpeechEncoder.states puts it back when frozen
_LAYERDROP_DRAWS_IN_EVAL = Version(transformers.__version__) < Version("5.23")


class ModelSourceError(UserError, OSError):
    """A model or tokenizer source that is neither a usable local directory nor a
    model that could be loaded from the hub. ``argument`` names what the source was
    given as (``crab.experiment`` renames it to the yaml key), ``detail`` the rest."""

    def __init__(self, argument, source, detail):
        super().__init__(f"{argument}: {detail}")
        self.argument, self.source, self.detail = argument, source, detail


class VocabularyError(ModelSourceError, ValueError):
    """A tokenizer with more tokens than the text encoder's vocabulary."""


class UnsupportedModelError(ModelSourceError, ValueError):
    """A model of a family the encoder cannot run (a text model as the speech encoder, say)."""


class TextLengthError(UserError, ValueError):
    """A ``text_max_length`` beyond the text encoder's table of positions."""


# transformers' models whose waveform goes through a convolutional feature encoder
# (``feature_extractor``) then transformer layers: what SpeechEncoder runs besides Whisper
CNN_SPEECH_MODELS = "wav2vec2, wavlm, hubert, data2vec-audio, unispeech, unispeech-sat, wav2vec2-conformer"


def check_speech_model(source, config):
    """Refuse a config that ``SpeechEncoder`` cannot run, naming the source and what it runs."""
    # the models of CNN_SPEECH_MODELS are the encoder-only configs with conv_stride (SpeechT5
    # has one too, but it is an encoder-decoder with the CNN in its prenet); SEW and SEW-D
    # (squeeze_factor) run their layers at a lower frame rate than the CNN's output lengths
    if isinstance(config, WhisperConfig) or (
        hasattr(config, "conv_stride")
        and not getattr(config, "is_encoder_decoder", False)
        and not hasattr(config, "squeeze_factor")
    ):
        return
    why = (
        " (its layers run at a lower frame rate than its CNN's)" if hasattr(config, "squeeze_factor") else ""
    )
    raise UnsupportedModelError(
        "speech_encoder source",
        source,
        f"{source} is of model type {config.model_type}, which is not a supported speech encoder{why}: "
        f"Whisper, or a model with a convolutional waveform encoder ({CNN_SPEECH_MODELS})",
    )


HINTS = {
    "tokenizer": "build it with stage 3 --bpe_vocab_size N (crab.tokenizer), or give a hub id",
}
DEFAULT_HINT = "give a local directory in Hugging Face format, or a hub id"


def _looks_like_path(source):
    """A hub id is ``name`` or ``namespace/name``; anything else with a slash is a path."""
    return source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source


def _one_line(err):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def from_source(argument, source, load):
    """``load(source)``, or a one-line ``ModelSourceError`` naming ``argument`` when
    ``source`` is a path that does not exist, a local directory that cannot be loaded,
    or a hub id that cannot be (a typo, or no network and not in the cache)."""
    if not isinstance(source, str) or not source:
        raise ModelSourceError(argument, source, f"expected a local directory or a hub id, got '{source}'")
    local = os.path.isdir(source)
    if not local and (_looks_like_path(source) or os.path.exists(source)):
        hint = HINTS.get(argument, DEFAULT_HINT)
        raise ModelSourceError(argument, source, f"no directory {source}; {hint}")
    try:
        return load(source)
    except (OSError, ValueError) as err:  # transformers: OSError; an invalid repo id: HFValidationError
        if isinstance(err, UserError):
            raise
        if local:
            detail = f"the directory {source} cannot be loaded: {_one_line(err)}"
        else:
            detail = (
                f"'{source}' is neither a local directory nor a model on the hub that could be "
                f"loaded: {_uncached(err) or _one_line(err)}"
            )
        raise ModelSourceError(argument, source, detail) from None


def _uncached(err):
    """What to say of a hub id that is neither in the Hugging Face cache nor reachable (a
    ``LocalEntryNotFoundError`` in ``err``'s chain, after huggingface_hub's ~30 s of retries
    unless offline is set), or None for any other error."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    cause, seen = err, set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, LocalEntryNotFoundError):
            why = (
                "HF_HUB_OFFLINE is set"
                if constants.HF_HUB_OFFLINE
                else "the hub cannot be reached: offline, HF_HUB_OFFLINE=1 skips its retries"
            )
            return (
                f"not in the Hugging Face cache ({why}): give a local directory, or download it where "
                "there is a network"
            )
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def lengths_to_mask(lengths, max_len=None):
    """Boolean ``(batch, max_len)`` mask, True where ``position < length``."""
    max_len = int(lengths.max()) if max_len is None else max_len
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def relative_to_absolute(rel_lens, max_len):
    """SpeechBrain relative lengths (fraction of the padded length) to integers."""
    return torch.round(rel_lens * max_len).long().clamp(1, max_len)


class LayerWeights(nn.Module):
    """Learned softmax-weighted sum over the hidden states of every layer."""

    def __init__(self, num_layers):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def forward(self, states):
        """``states`` is ``(batch, time, layers, dim)``."""
        weights = torch.softmax(self.logits, dim=0).view(1, 1, -1, 1)
        return (weights * states).sum(dim=2)


class _FixedStandardization(nn.Module):
    """Mean and standard deviation of a training set, summed over ``accumulate`` calls
    then fixed by ``finish`` (once, before training) and saved with the model: buffers
    ``mean``, ``std`` (of ``shape``, at least ``min_std``) and ``ready``."""

    def __init__(self, shape, min_std):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))
        self.register_buffer("ready", torch.tensor(False))
        self.min_std = min_std
        self._sums = None

    def _add(self, x):
        """Add the rows of ``x`` (``(n, *shape)``), in double precision."""
        x = x.double()
        sums = (x.shape[0], x.sum(dim=0), (x * x).sum(dim=0))
        self._sums = (
            sums if self._sums is None else tuple(a + b for a, b in zip(self._sums, sums, strict=True))
        )

    def finish(self):
        count, total, squares = self._sums
        mean = total / count
        var = (squares / count - mean * mean).clamp(min=0.0)
        self.mean.copy_(mean)
        self.std.copy_(var.sqrt().clamp(min=self.min_std))
        self.ready.fill_(True)
        self._sums = None


class StateNormalization(_FixedStandardization):
    """Standardizes each layer's dimensions with fixed statistics of the training
    data (mean and standard deviation over its real frames), saved with the model.

    Pretrained speech encoders have a few dimensions with activations two orders
    of magnitude above the rest; without this a small head trained on frozen
    states barely learns. Statistics come from ``accumulate`` calls then
    ``finish``, once before training, so no prediction depends on its batch.
    """

    def __init__(self, num_states, dim):
        super().__init__((num_states, dim), min_std=1e-5)

    def forward(self, states):
        return (states - self.mean) / self.std

    def accumulate(self, states, mask):
        """Add the real frames of a ``(batch, time, layers, dim)`` batch."""
        self._add(states[mask])  # (frames, layers, dim)


class WaveformNormalization(_FixedStandardization):
    """Z-normalises waveforms with one mean and standard deviation of the training
    set's samples (the authors' code), fixed before training and saved with the model.

    Statistics come from ``accumulate`` calls then ``finish``, once before training
    (``crab.brain.CrabBrain.fit_state_normalization``); a model used before that
    stops with an error rather than run on unnormalised audio.
    """

    def __init__(self):
        super().__init__((), min_std=1e-7)
        self.fitted = False  # mirrors ``ready`` without reading the device each batch

    def forward(self, wavs):
        if not self.fitted:
            raise RuntimeError(
                "waveform_normalization: global has no statistics yet: they are computed from the "
                "training set before training (crab.bin.train) and saved with the model; a frozen-"
                "encoder feature cache cannot be extracted before them"
            )
        return (wavs - self.mean.to(wavs.dtype)) / self.std.to(wavs.dtype)

    def accumulate(self, wavs, mask):
        """Add the real samples of a ``(batch, samples)`` batch."""
        self._add(wavs[mask])

    def finish(self):
        super().finish()
        self.fitted = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.fitted = bool(self.ready)


WAVEFORM_NORMALIZATIONS = ("auto", "none", "utterance", "global")


def waveform_normalization_mode(value, source):
    """``none``, ``utterance`` or ``global`` from a ``normalize_waveform`` setting: one
    of those, ``auto`` or None (the model's feature-extractor ``do_normalize``:
    ``utterance`` or ``none``; ``none`` for a directory without one), or a bool
    (True: ``utterance``, as before the setting had names)."""
    if isinstance(value, bool):
        return "utterance" if value else "none"
    if value is None or value == "auto":
        return "utterance" if _default_normalize(source) else "none"
    if value not in WAVEFORM_NORMALIZATIONS:
        raise ValueError(f"waveform_normalization must be one of {WAVEFORM_NORMALIZATIONS}, got '{value}'")
    return value


class _Encoder(nn.Module):
    """Freezing, layer selection and state normalization shared by the speech
    and text wrappers."""

    def __init__(self, freeze, layer_weighting, normalize_states=False, finetune_top_layers=0):
        super().__init__()
        self.freeze = freeze
        self.layer_weighting = layer_weighting
        self.normalize_states = normalize_states
        self.finetune_top_layers = finetune_top_layers

    def _setup_output(self, num_hidden_states):
        choice = self.layer_weighting
        is_index = isinstance(choice, int) and not isinstance(choice, bool)
        if choice not in ("last", "weighted_sum") and not (is_index and 0 <= choice < num_hidden_states):
            raise ValueError(
                f"layer_weighting must be 'last', 'weighted_sum' or a hidden-state index "
                f"0..{num_hidden_states - 1} (0: the input embeddings), got '{choice}'"
            )
        self.layer_index = choice if is_index else None
        self.num_layers = num_hidden_states - 1
        self._setup_top_layers()
        self.layer_weights = (
            LayerWeights(num_hidden_states) if self.layer_weighting == "weighted_sum" else None
        )
        self.state_norm = (
            StateNormalization(self.num_states, self.output_dim) if self.normalize_states else None
        )
        if self.freeze:
            for param in self.model.parameters():
                param.requires_grad = False

    def _setup_top_layers(self):
        """With ``finetune_top_layers: k``, the k layers up to the one read are
        trained and everything below them is frozen: ``states`` then returns the
        hidden state below those layers (what a feature cache stores) and
        ``select`` runs them."""
        k = self.finetune_top_layers
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"finetune_top_speech_layers must be a number of layers >= 0, got '{k}'")
        self.top_range = None
        if k == 0:
            return
        read = self.num_layers if self.layer_weighting == "last" else self.layer_index
        if read is None or not 1 <= k <= read:
            raise ValueError(
                f"finetune_top_speech_layers: {k} needs one layer read (layer_weighting 'last' or an "
                f"index) with at least {k} layers below it, got layer_weighting '{self.layer_weighting}'"
            )
        if self.freeze:
            raise ValueError(
                "finetune_top_speech_layers > 0 fine-tunes part of the encoder: it needs "
                "freeze_speech_encoder: false"
            )
        self.top_range = range(read - k, read)
        self.model.requires_grad_(False)
        for module in self._top_modules():
            module.requires_grad_(True)

    def _top_blocks(self):
        blocks = self._blocks()
        return [blocks[i] for i in self.top_range]

    def _top_modules(self):
        """The fine-tuned layers, and the final layer norm when the last layer is read."""
        last = self.top_range.stop == self.num_layers
        return self._top_blocks() + ([self._final_norm()] if last else [])

    def train(self, mode=True):
        super().train(mode)
        if self.frozen_states:
            self.model.eval()  # frozen layers keep their dropout off
        if self.top_range is not None:
            for module in self._top_modules():
                module.train(mode)
        return self

    @property
    def frozen_states(self):
        """``states`` is computed without gradients (and can be cached)."""
        return self.freeze or self.top_range is not None

    @property
    def num_states(self):
        """How many layers ``states`` stacks: every hidden state for
        ``weighted_sum``, one (the last, or the chosen index) otherwise."""
        return 1 if self.layer_weights is None else self.layer_weights.logits.numel()

    @property
    def wants_all_states(self):
        return self.layer_weighting != "last"

    def _stack(self, hidden_states, last):
        """``(batch, time, num_states, dim)`` from all hidden states and the output."""
        if self.top_range is not None:
            return hidden_states[self.top_range.start].unsqueeze(2)
        if self.layer_weights is not None:
            return torch.stack(hidden_states, dim=2)
        if self.layer_index is not None:
            return hidden_states[self.layer_index].unsqueeze(2)
        return last.unsqueeze(2)

    def readout(self, states, mask):
        """The hidden states ``select`` chooses from: ``states`` themselves, or
        the output of the fine-tuned top layers run on them."""
        if self.top_range is None:
            return states
        x = self._run_blocks(states[:, :, 0], mask, self._top_blocks())
        if self.top_range.stop == self.num_layers:
            x = self._final_norm()(x)
        return x.unsqueeze(2)

    def select(self, states, mask):
        """The encoder output from ``states`` ``(batch, time, num_states, dim)``
        and their frame ``mask``: the one layer kept, or the learned weighted sum
        (trainable even when the encoder is frozen, and on cached states), after
        the fine-tuned top layers and ``state_norm`` if any."""
        states = self.readout(states, mask)
        if self.state_norm is not None:
            states = self.state_norm(states)
        if self.layer_weights is None:
            return states[:, :, -1]
        return self.layer_weights(states)

    def forward(self, *inputs):
        states, mask = self.states(*inputs)
        return self.select(states, mask), mask

    def states(self, *inputs):
        """``(states, mask)``: the hidden states ``select`` reads, ``(batch, time,
        num_states, dim)``, computed without gradients when the encoder (or all
        of it below the fine-tuned top layers) is frozen. This is what the
        frozen-feature cache (``crab.features``) stores."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_states):
            if not (
                _LAYERDROP_DRAWS_IN_EVAL
                and self.frozen_states
                and not any(m.training for m in self.model.modules())
            ):
                return self._states(*inputs)
            # else the CPU RNG (the head's dropout) would move, and a feature-cached training
            # would differ from the same one end to end
            cpu_rng = torch.get_rng_state()
            try:
                return self._states(*inputs)
            finally:
                torch.set_rng_state(cpu_rng)

    def encoder_parameters(self):
        """Trainable parameters of the pretrained network (not the layer weights)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def frozen_parameter_names(self):
        """Names (``model.state_dict`` keys) of what ``states`` depends on: all of
        the network, or what lies below the fine-tuned top layers."""
        tensors = self.model.state_dict(keep_vars=True)
        if self.top_range is None:
            return list(tensors)
        tuned = {id(t) for m in self._top_modules() for t in m.state_dict(keep_vars=True).values()}
        return [name for name, t in tensors.items() if id(t) not in tuned]


def _load(model_cls, source, pretrained, **config_overrides):
    config = AutoConfig.from_pretrained(source, **config_overrides)
    if pretrained:
        return model_cls.from_pretrained(source, config=config)
    if hasattr(model_cls, "from_config"):  # the Auto classes
        return model_cls.from_config(config)
    return model_cls(config)


class SpeechEncoder(_Encoder):
    """A Hugging Face speech encoder on 16 kHz waveforms.

    The Whisper encoder and the models with a convolutional waveform encoder
    (``CNN_SPEECH_MODELS``: WavLM, HuBERT, wav2vec 2.0 and XLS-R, data2vec-audio, ...)
    are supported; any other source is refused (``UnsupportedModelError``). Whisper
    is run on log-mel features of the batch's own length, not padded to 30 s.

    Arguments
    ---------
    source : str
        Hub id or local directory.
    pretrained : bool
        Load weights (True) or build from the config with random weights.
    freeze : bool
        Freeze the whole encoder.
    freeze_feature_extractor : bool
        Freeze the convolutional feature encoder (the paper's setting; for
        Whisper, its two input convolutions).
    layer_weighting : str or int
        ``last`` (paper), ``weighted_sum`` (learned softmax weights over layers),
        or the index of one hidden state (0: the input embeddings, N: the last).
    normalize_waveform : str, bool or None
        ``utterance``: zero-mean unit-variance per utterance (over its real
        samples); ``global``: the training set's one mean and standard deviation
        (``WaveformNormalization``, the authors' code); ``none``: raw audio;
        ``auto`` or None: the model's feature-extractor ``do_normalize`` when it
        has a preprocessor config (``utterance`` or ``none``), else ``none``.
    layerdrop : float or None
        Overrides the config's layerdrop; forced to 0 unless ``layer_weighting`` is
        ``last``: a dropped layer records no hidden state, so ``weighted_sum`` and a
        layer index would read other layers.
    normalize_states : bool
        Standardize each layer's states with training-set statistics
        (``StateNormalization``) before the layer selection.
    finetune_top_layers : int
        0: the whole encoder follows ``freeze``. k > 0 (Whisper): train only the
        k transformer layers up to the one read (and the final layer norm when
        that is the last), the rest frozen; a feature cache then holds the
        hidden state below them, so fine-tuning them runs on cached states.
    gradient_checkpointing : bool
        Recompute the encoder's layer activations in the backward pass instead of
        keeping them (transformers' ``gradient_checkpointing_enable``): less memory
        for about one more forward pass of the encoder; the same gradients.
    """

    def __init__(
        self,
        source,
        pretrained=True,
        freeze=False,
        freeze_feature_extractor=True,
        layer_weighting="last",
        normalize_waveform=None,
        layerdrop=None,
        normalize_states=False,
        finetune_top_layers=0,
        gradient_checkpointing=False,
    ):
        super().__init__(freeze, layer_weighting, normalize_states, finetune_top_layers)
        config = from_source("speech_encoder source", source, AutoConfig.from_pretrained)
        check_speech_model(source, config)
        self.is_whisper = isinstance(config, WhisperConfig)
        overrides = {}
        if layer_weighting != "last":  # layerdrop would shift the hidden-state indices
            layerdrop = 0.0
        if layerdrop is not None:
            key = "encoder_layerdrop" if self.is_whisper else "layerdrop"
            overrides[key] = layerdrop
        if self.is_whisper:
            self.model = from_source(
                "speech_encoder source", source, lambda s: _load(WhisperModel, s, pretrained, **overrides)
            ).encoder
            self.features = _whisper_features(source, config)
            num_layers = config.encoder_layers
            frontend = [self.model.conv1, self.model.conv2]
        else:
            self.model = from_source(
                "speech_encoder source", source, lambda s: _load(AutoModel, s, pretrained, **overrides)
            )
            self.features = None
            num_layers = config.num_hidden_layers
            frontend = [self.model.feature_extractor]
        for module in frontend:
            if freeze_feature_extractor:
                module.requires_grad_(False)
            if not hasattr(module, "_requires_grad"):  # Whisper's convolutions
                continue
            # transformers' CNN (wav2vec 2.0 family) makes the waveform require grad (for
            # reentrant checkpointing, not used here) unless the flag is off: a frozen CNN
            # would build an autograd graph and run its backward, a trained one compute
            # the waveform's gradient, which nothing reads
            module._requires_grad = False
            # under torch.compile it runs eagerly: compiled for dynamic lengths in one graph
            # with the layers above, inductor (torch 2.13) fails on their attention
            # (ValueRangeError)
            _eager_under_compile(module)
        if not self.is_whisper:
            # so does the positional convolution: inductor's lowering of its input gradient
            # fixes the number of frames (torch 2.13), and each new batch length was compiled
            # again until dynamo's recompile limit left the encoder's layers eager
            _eager_under_compile(self.model.encoder.pos_conv_embed)
        _enable_gradient_checkpointing(self.model, gradient_checkpointing)
        self.use_attention_mask = getattr(config, "feat_extract_norm", "layer") == "layer"
        _float_padding_masks(self.model)
        _device_position_buckets(self.model)
        if hasattr(self.model, "_mask_hidden_states"):
            self.model._mask_hidden_states = _host_spec_augment(self.model)
        if hasattr(self.model, "_get_feature_vector_attention_mask"):
            self.model._get_feature_vector_attention_mask = _host_frame_mask(self.model)
        self.waveform_normalization = waveform_normalization_mode(normalize_waveform, source)
        self.waveform_norm = WaveformNormalization() if self.waveform_normalization == "global" else None
        self.output_dim = config.d_model if self.is_whisper else config.hidden_size
        self._setup_output(num_layers + 1)

    @property
    def normalize_waveform(self):
        """False (raw), True (per utterance) or ``"global"`` (the feature cache's record)."""
        return {"none": False, "utterance": True}.get(
            self.waveform_normalization, self.waveform_normalization
        )

    @property
    def padding_dependent(self):
        """Whether an utterance's states depend on the padding of its batch (docs/training.md):
        Whisper's last frames (30 s windows), the group-norm models (run without an attention
        mask, on zero-padded audio), data2vec-audio (its positional convolutions),
        wav2vec2-conformer (the convolution module of each layer reads the padded frames)."""
        model_type = None if self.is_whisper else self.model.config.model_type
        return (
            self.is_whisper
            or not self.use_attention_mask
            or model_type in ("data2vec-audio", "wav2vec2-conformer")
        )

    @property
    def max_seconds(self):
        """Longest audio the encoder reads (Whisper: its 1500 positions, 30 s; its feature
        extractor cuts what is longer), or None: no limit."""
        return self.model.embed_positions.num_embeddings * 2 * 160 / 16000 if self.is_whisper else None

    @property
    def min_samples(self):
        """Shortest input (samples) that yields at least one output frame."""
        if self.is_whisper:
            return 2 * 160
        n = 1
        while int(self.model._get_feat_extract_output_lengths(n)) < 1:
            n += 1
        return n

    def _states(self, wavs, wav_lens):
        """Encode ``wavs`` (batch, samples) with SpeechBrain relative ``wav_lens`` (a
        tensor, or an array: no wait for the device)."""
        # lengths on the host (no wait when wav_lens is on the CPU), masks on the device
        lengths = relative_to_absolute(torch.as_tensor(wav_lens).detach().cpu(), wavs.shape[1])
        sample_mask = device_mask(lengths, wavs.shape[1], wavs.device)
        if self.waveform_normalization == "utterance":
            wavs = _masked_standardize(wavs, sample_mask)
        elif self.waveform_normalization == "global":
            wavs = self.waveform_norm(wavs)
        wavs = wavs.masked_fill(~sample_mask, 0.0)
        if self.is_whisper:
            return self._encode_whisper(wavs, lengths)
        frame_lens = self.model._get_feat_extract_output_lengths(lengths)
        # the real frames before any adapter, on the host, for the masking in training
        # (_host_spec_augment); this call's only
        masked_lens = lengths_before_adapter(self.model, lengths)
        self.model.crab_frame_lens = masked_lens if self.use_attention_mask else None
        self.model.crab_sample_lens = lengths if self.use_attention_mask else None
        try:
            outputs = self.model(
                wavs,
                attention_mask=sample_mask.long() if self.use_attention_mask else None,
                output_hidden_states=self.wants_all_states,
            )
        finally:
            self.model.crab_frame_lens = self.model.crab_sample_lens = None
        states = self._stack(_encoder_hidden_states(self.model, outputs), outputs.last_hidden_state)
        if states.shape[1] != outputs.last_hidden_state.shape[1]:  # hidden states before an adapter
            frame_lens = masked_lens
        return states, device_mask(frame_lens, states.shape[1], states.device)

    def _encode_whisper(self, wavs, lengths):
        # Log-mel of each utterance over its own samples, padded to the batch max; on the
        # host in fp32 under bf16 autocast on CPU too (transformers computes it with torch:
        # the spectrogram would be rounded to bf16, which numpy cannot take). The batch goes
        # to the host in one copy (one wait for the device, not one per utterance).
        host = wavs.float().cpu()
        with torch.autocast("cpu", enabled=False):
            feats = self.features(
                [w[:n].numpy() for w, n in zip(host, lengths.tolist(), strict=True)],
                sampling_rate=16000,
                padding="longest",
                return_tensors="pt",
            ).input_features
        feats = to_device(feats, wavs.device)
        enc = self.model
        x = nn.functional.gelu(enc.conv1(feats))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        frames = x.shape[1]
        if frames > enc.embed_positions.num_embeddings:
            raise ValueError(
                f"Whisper takes at most 30 s of audio; got {frames} frames "
                f"({frames * 0.02:.1f} s). Lower max_duration."
            )
        x = x + enc.embed_positions.weight[:frames]
        x = nn.functional.dropout(x, p=enc.dropout, training=enc.training)
        frame_lens = torch.clamp((lengths // 160 + 1) // 2, 1, frames)
        mask = device_mask(frame_lens, frames, x.device)
        # Layers above the one kept are not run.
        if self.top_range is not None:
            stop = self.top_range.start
        elif self.layer_index is not None:
            stop = self.layer_index
        else:
            stop = self.num_layers
        states = [x]
        self._run_blocks(x, mask, enc.layers[:stop], states)
        if stop == self.num_layers:
            states[-1] = enc.layer_norm(states[-1])
        return self._stack(states, states[-1]), mask

    def _blocks(self):
        if not self.is_whisper:
            config = self.model.config
            raise UnsupportedModelError(
                "speech_encoder source",
                config.name_or_path,
                f"finetune_top_speech_layers is implemented for Whisper encoders, not {config.name_or_path} "
                f"(model type {config.model_type}): set it to 0",
            )
        return self.model.layers

    def _final_norm(self):
        return self.model.layer_norm

    @staticmethod
    def _run_blocks(x, mask, blocks, outputs=None):
        """Whisper encoder layers on ``x`` (batch, frames, dim), padded frames
        masked out of the attention; each layer's output is appended to ``outputs``."""
        frames = x.shape[1]
        additive = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        additive = additive.masked_fill(~mask, torch.finfo(x.dtype).min)
        additive = additive[:, None, None, :].expand(-1, 1, frames, frames)
        for layer in blocks:
            x = layer(x, additive)
            x = x[0] if isinstance(x, tuple) else x
            if outputs is not None:
                outputs.append(x)
        return x


def _encoder_hidden_states(model, outputs):
    """``outputs.hidden_states`` with the last one the encoder's output. transformers
    records the stable-layer-norm models' (``do_stable_layer_norm``: WavLM Large, HuBERT
    Large, wav2vec 2.0 Large-LV60 and XLS-R, UniSpeech(-SAT)) and wav2vec2-conformer's
    last hidden state before their encoder's final layer norm, so index N and
    ``weighted_sum`` would not read the output that ``last`` reads."""
    hidden = outputs.hidden_states
    config = model.config
    final_norm = getattr(config, "do_stable_layer_norm", False) or config.model_type == "wav2vec2-conformer"
    if hidden is None or not final_norm:
        return hidden
    last = hidden[-1]
    if last.shape == outputs.last_hidden_state.shape:  # no adapter after the encoder
        return (*hidden[:-1], outputs.last_hidden_state)
    return (*hidden[:-1], model.encoder.layer_norm(last))


def _enable_gradient_checkpointing(model, enabled):
    """transformers' gradient checkpointing of ``model``'s layers (in training mode only),
    non-reentrant: frozen parts and layers whose inputs need no gradient stay correct."""
    if not isinstance(enabled, bool):
        raise ValueError(f"gradient_checkpointing must be true or false, got '{enabled}'")
    if enabled:  # the newer name; transformers warns that the older one will go
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if getattr(model.config, "use_cache", False):
            # an encoder keeps no cache; left on, transformers logs in every run that
            # caching is incompatible with checkpointing (RoBERTa's config has it on)
            model.config.use_cache = False


def _float_padding_masks(model):
    """Run WavLM's attention through torch's ``scaled_dot_product_attention``, with its
    gated relative position bias and the padding as one float mask.

    ``WavLMAttention`` calls ``F.multi_head_attention_forward(need_weights=True)``,
    which keeps every head's softmax probabilities (and dropout mask) for the backward
    pass: three (batch x heads, frames, frames) tensors per layer where the bias is
    the only one needed (in fp32, 8 x 16 x 600 x 600 x 4 bytes = 0.18 GB each, per
    layer of WavLM Large at 8 x 12 s: 8.8 GB for the two extra over 24 layers). It
    also passes a boolean ``key_padding_mask`` with the float bias, which torch
    deprecates. Here the padding is added to the bias as -inf and the attention is
    the same computation without the probabilities kept (CUDA's memory-efficient
    kernel takes a float bias). Other models are left as they are."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    for module in model.modules():
        if isinstance(module, WavLMAttention) and not getattr(module, "_crab_float_mask", False):
            module.torch_multi_head_self_attention = _sdpa_attention(module)
            module._crab_float_mask = True


def _sdpa_attention(attention):
    def forward(hidden_states, attention_mask, gated_position_bias, output_attentions=False):
        # output_attentions: passed positionally (here ignored) by transformers 5.0-5.15
        batch, frames, dim = hidden_states.shape
        heads = attention.num_heads

        def split_heads(projection):
            return projection(hidden_states).view(batch, frames, heads, dim // heads).transpose(1, 2)

        query, key, value = (split_heads(p) for p in (attention.q_proj, attention.k_proj, attention.v_proj))
        bias = gated_position_bias.view(batch, heads, frames, frames)  # its (batch, head) order
        if attention_mask is not None:
            padding = torch.zeros(attention_mask.shape, dtype=bias.dtype, device=bias.device)
            bias = bias + padding.masked_fill(attention_mask.ne(1), float("-inf"))[:, None, None, :]
        out = nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=bias.to(query.dtype),  # autocast runs the projections in bf16 / fp16
            dropout_p=attention.dropout if attention.training else 0.0,
        )
        return attention.out_proj(out.transpose(1, 2).reshape(batch, frames, dim)), None

    return forward


def _device_position_buckets(model):
    """WavLM's relative position bias with the bucket of each frame pair computed on the
    device: transformers computes it on the host and copies it from pageable memory
    (a wait for the device in every forward pass). The same buckets, the same bias."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    for module in model.modules():
        if isinstance(module, WavLMAttention) and hasattr(module, "rel_attn_embed"):
            module.compute_bias = _position_bias(module)


def _position_bias(attention):
    def compute_bias(query_length, key_length):
        device = attention.rel_attn_embed.weight.device
        context = torch.arange(query_length, dtype=torch.long, device=device)[:, None]
        memory = torch.arange(key_length, dtype=torch.long, device=device)[None, :]
        buckets = attention._relative_positions_bucket(memory - context)
        return attention.rel_attn_embed(buckets).permute([2, 0, 1])

    return compute_bias


def _host_frame_mask(model):
    """transformers' frame mask of wav2vec 2.0-style models
    (``_get_feature_vector_attention_mask``) from the samples' lengths on the host
    (``model.crab_sample_lens``, set for each call): theirs counts the samples on the
    device and indexes with the result (a wait for the device). The same mask, True on
    the frames before each utterance's output length."""
    original = model._get_feature_vector_attention_mask

    def get_feature_vector_attention_mask(feature_vector_length, attention_mask, *adapter, **by_name):
        lengths = getattr(model, "crab_sample_lens", None)
        if lengths is None:
            return original(feature_vector_length, attention_mask, *adapter, **by_name)
        # add_adapter, where the model has one, as the caller gave it
        frames = model._get_feat_extract_output_lengths(lengths, *adapter, **by_name).to(torch.long)
        return device_mask(frames, feature_vector_length, attention_mask.device)

    return get_feature_vector_attention_mask


def lengths_before_adapter(model, lengths):
    """The frames of the CNN (what SpecAugment masks) for ``lengths`` samples: with
    ``add_adapter`` the model's output is shorter, after its adapter."""
    if getattr(model.config, "add_adapter", False):
        return model._get_feat_extract_output_lengths(lengths, add_adapter=False)
    return model._get_feat_extract_output_lengths(lengths)


def _eager_under_compile(module):
    """``module`` runs eagerly inside code that torch.compile traces (a graph break)."""
    module.forward = torch.compiler.disable(module.forward)


def _host_spec_augment(model):
    """transformers' SpecAugment of wav2vec 2.0-style models (``_mask_hidden_states``,
    in training when ``mask_time_prob`` or ``mask_feature_prob`` > 0), with the masks
    drawn from the real frames' lengths on the host (``model.crab_frame_lens``, set
    for each call) and copied from pinned memory, and applied with ``torch.where``.
    The draws are transformers' own (``_compute_mask_indices``, NumPy's generator), over
    the real frames only: the same masks as transformers' WavLM and wav2vec 2.0 (HuBERT's
    draws over the padding too). Their version counts the frames on the device and
    indexes with a boolean mask, each a wait for the device."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

    def mask_hidden_states(hidden_states, mask_time_indices=None, attention_mask=None):
        config = model.config
        if not getattr(config, "apply_spec_augment", True) or not model.training:
            return hidden_states
        batch, frames, dim = hidden_states.shape
        lengths = getattr(model, "crab_frame_lens", None)  # None: every frame is real
        if config.mask_time_prob > 0:
            real = None if lengths is None else (torch.arange(frames) < lengths.unsqueeze(1)).long()
            drawn = _compute_mask_indices(
                (batch, frames),
                mask_prob=config.mask_time_prob,
                mask_length=config.mask_time_length,
                attention_mask=real,
                min_masks=config.mask_time_min_masks,
            )
            masked = to_device(torch.from_numpy(drawn), hidden_states.device).unsqueeze(-1)
            embed = model.masked_spec_embed.to(hidden_states.dtype)
            hidden_states = torch.where(masked, embed, hidden_states)
        if config.mask_feature_prob > 0:
            drawn = _compute_mask_indices(
                (batch, dim),
                mask_prob=config.mask_feature_prob,
                mask_length=config.mask_feature_length,
                min_masks=getattr(config, "mask_feature_min_masks", 0),  # WavLMConfig has none
            )
            masked = to_device(torch.from_numpy(drawn), hidden_states.device).unsqueeze(1)
            hidden_states = hidden_states.masked_fill(masked, 0.0)
        return hidden_states

    return mask_hidden_states


def _whisper_features(source, config):
    try:
        features = WhisperFeatureExtractor.from_pretrained(source)
    except OSError:  # a config-only directory (tests, tiny recipes)
        return WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    # the frame lengths, min_samples and max_seconds count 10 ms frames of 16 kHz audio
    if (features.sampling_rate, features.hop_length) != (16000, 160):
        raise ModelSourceError(
            "speech_encoder source",
            source,
            f"the feature extractor of {source} (preprocessor_config.json) reads "
            f"{features.sampling_rate} Hz audio with a hop of {features.hop_length} samples; "
            "Crab's Whisper path needs 16000 Hz and 160 (every Whisper checkpoint's)",
        )
    if getattr(features, "dither", 0.0):  # transformers adds it in every mode, evaluation included
        logger.warning(
            "the feature extractor of %s adds dither %s (preprocessor_config.json): Whisper's "
            "log-mel features are random, so evaluation and inference vary from run to run and a "
            "feature cache keeps one draw; set dither to 0.0 for repeatable results",
            source,
            features.dither,
        )
    return features


def _default_normalize(source):
    try:
        return bool(getattr(AutoFeatureExtractor.from_pretrained(source), "do_normalize", False))
    except (OSError, ValueError):
        return False


def _masked_standardize(wavs, mask):
    mask = mask.to(wavs.dtype)
    count = mask.sum(dim=1, keepdim=True)
    mean = (wavs * mask).sum(dim=1, keepdim=True) / count
    var = (((wavs - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) / torch.sqrt(var + 1e-7)


# Characters of a transcript kept per token of ``max_length`` before tokenizing. The
# tokenizer's time and memory grow with the whole text (a 10 MB transcript: 2.2 GB)
# although only ``max_length`` tokens are kept. Subword tokens of English text average
# 4-5 characters (a token longer than 20 is a rare long word), so the first
# ``max_length * 20`` characters hold the tokens that truncation keeps, with a 4x margin:
# a transcript is cut differently only if its first ``max_length`` tokens average over
# 20 characters each.
CHARS_PER_TOKEN = 20


def truncate_characters(texts, max_length):
    """``texts`` cut to ``max_length * CHARS_PER_TOKEN`` characters each (see there)."""
    limit = max_length * CHARS_PER_TOKEN
    return [text[:limit] for text in texts]


TEXT_PADDINGS = {"dynamic": "longest", "max_length": "max_length"}
TEXT_MODELS = "roberta, bert, deberta-v2, xlm-roberta, electra, modernbert, distilbert, ..."


def check_text_model(source, config):
    """Refuse a config whose model ``TextEncoder`` cannot run on token ids alone: an
    encoder-decoder (T5, BART) or a model of other inputs (speech, images)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING[type(config)] if type(config) in MODEL_MAPPING else None
    reads_tokens = model_class is None or model_class.main_input_name == "input_ids"
    if reads_tokens and not getattr(config, "is_encoder_decoder", False):
        return  # an unknown config: AutoModel names it
    raise UnsupportedModelError(
        "text_encoder source",
        source,
        f"{source} is of model type {config.model_type}, which is not a supported text encoder: "
        f"a model of token ids, not an encoder-decoder ({TEXT_MODELS})",
    )


def has_tokens(tokenizer):
    """Has ``tokenizer`` tokens besides its special ones? transformers builds a tokenizer of
    special tokens alone from a directory that holds a model's config but no tokenizer."""
    return len(tokenizer.get_vocab()) > len(set(tokenizer.all_special_tokens))


def check_own_tokenizer(source, tokenizer_source, tokenizer):
    """Refuse a ``tokenizer`` with tokens that the tokenizer saved with the pretrained text
    encoder ``source`` lacks or numbers otherwise: its ids would name other tokens' embeddings (the
    corpus's own BPE tokenizer of stage 3 with a pretrained RoBERTa trains on noise). A source
    without a tokenizer of its own is not checked."""
    try:
        own = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        logger.debug("%s has no tokenizer to compare %s with: %s", source, tokenizer_source, _one_line(err))
        return
    theirs, ours = own.get_vocab(), tokenizer.get_vocab()
    differ = sum(theirs.get(token) != index for token, index in ours.items())
    if not differ or not has_tokens(own):  # the same ids (its own, or a part of it)
        return
    raise ModelSourceError(
        "tokenizer",
        tokenizer_source,
        f"the tokenizer {tokenizer_source} has another vocabulary than the one saved with the "
        f"pretrained text encoder {source} ({differ} of its {len(ours)} tokens are missing there or "
        f"have other ids; {len(theirs)} tokens there): the encoder's embeddings are indexed by the "
        f"ids of its own tokenizer, so set tokenizer_source to {source}",
    )


def position_capacity(model):
    """Tokens that the text ``model``'s table of absolute positions numbers, or None for
    a model without one (relative or rotary positions: DeBERTa-v3, ModernBERT)."""
    table = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None
    # RoBERTa's family numbers the positions of real tokens from padding_idx + 1 on
    first = 0 if table.padding_idx is None else table.padding_idx + 1
    return table.num_embeddings - first


class TextEncoder(_Encoder):
    """A Hugging Face text encoder and its tokenizer (RoBERTa by default).

    Tokenizes inside ``forward`` so that each batch is padded only to its longest
    transcript (dynamic padding), truncated at ``max_length`` tokens (each transcript
    first cut to ``max_length * CHARS_PER_TOKEN`` characters, so that a huge one costs
    no more than a long one).

    Arguments
    ---------
    source : str
        Hub id or local directory of the model.
    tokenizer : str or None
        Hub id or directory of the tokenizer; defaults to ``source``.
    pretrained, freeze, layer_weighting : see ``SpeechEncoder``.
    max_length : int
        Truncation length in tokens (128 in the paper).
    normalize_states, gradient_checkpointing : bool
        See ``SpeechEncoder``.
    padding : str
        ``dynamic``: each batch padded to its longest transcript; ``max_length``:
        every transcript padded to ``max_length`` tokens (the authors' code).
    """

    def __init__(
        self,
        source,
        tokenizer=None,
        pretrained=True,
        freeze=False,
        layer_weighting="last",
        max_length=128,
        normalize_states=False,
        padding="dynamic",
        gradient_checkpointing=False,
    ):
        super().__init__(freeze, layer_weighting, normalize_states)
        if padding not in TEXT_PADDINGS:
            raise ValueError(f"text_padding must be one of {list(TEXT_PADDINGS)}, got '{padding}'")
        self.padding = padding
        # the tokenizer's own source, else the model's: what its errors name
        tok_argument, tok_source = ("tokenizer", tokenizer) if tokenizer else ("text_encoder source", source)
        self.tokenizer = from_source(tok_argument, tok_source, AutoTokenizer.from_pretrained)
        check_text_model(source, from_source("text_encoder source", source, AutoConfig.from_pretrained))
        if self.tokenizer.pad_token is None:  # a decoder-only model's (GPT-2's): batches are padded
            raise ModelSourceError(
                tok_argument,
                tok_source,
                f"the tokenizer of {tok_source} has no padding token: save it with one "
                "(tokenizer.pad_token = tokenizer.eos_token, then save_pretrained)",
            )
        if pretrained and tokenizer and os.path.realpath(tokenizer) != os.path.realpath(source):
            check_own_tokenizer(source, tokenizer, self.tokenizer)
        self.model = from_source("text_encoder source", source, lambda s: _load(AutoModel, s, pretrained))
        vocab, tokens = self.model.config.vocab_size, len(self.tokenizer)
        if tokens > vocab:  # token ids past the embedding table: an index error later
            raise VocabularyError(
                tok_argument,
                tok_source,
                f"the tokenizer {tok_source} has {tokens} tokens but the text encoder {source} "
                f"has a vocabulary of {vocab}: "
                + (
                    f"build the tokenizer with --bpe_vocab_size {vocab} or less (stage 3), or "
                    if tokenizer
                    else ""
                )
                + f"use a text encoder with a vocabulary of {tokens} or more",
            )
        if not has_tokens(self.tokenizer):
            raise ModelSourceError(
                tok_argument,
                tok_source,
                f"the tokenizer of {tok_source} has no tokens but its "
                f"{len(set(self.tokenizer.all_special_tokens))} special ones "
                "(is its tokenizer.json, or vocab.json and merges.txt, missing?)",
            )
        capacity = position_capacity(self.model)
        if capacity is not None and max_length > capacity:  # else an index error at the first long transcript
            raise TextLengthError(
                f"text_max_length: {max_length} tokens, but the text encoder {source} numbers "
                f"{capacity} positions: set text_max_length to {capacity} or less"
            )
        self.max_length = max_length
        self.output_dim = self.model.config.hidden_size
        _enable_gradient_checkpointing(self.model, gradient_checkpointing)
        self._setup_output(self.model.config.num_hidden_layers + 1)

    def _states(self, texts):
        """Encode a list of strings."""
        input_ids, mask, model_mask = self._tokens(texts)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=model_mask,
            output_hidden_states=self.wants_all_states,
        )
        return self._stack(outputs.hidden_states, outputs.last_hidden_state), mask

    @torch.compiler.disable  # host work: compiled, each batch's strings would be compiled again
    def _tokens(self, texts):
        """``(input_ids, mask, model_mask)`` of ``texts`` on the model's device: the mask
        keeps its lengths on the host (``host_lengths``); ``model_mask`` is what the model
        is given (``_model_mask``)."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(
            truncate_characters(texts, self.max_length),
            padding=TEXT_PADDINGS[self.padding],
            padding_side="right",  # the masks' lengths (GRU packing) count real tokens from the start
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        # copied without waiting for the device (a copy from pageable memory waits for
        # the speech encoder queued before)
        input_ids = to_device(tokens["input_ids"], device)
        mask = to_device(tokens["attention_mask"], device).bool()
        mask.host_lengths = tokens["attention_mask"].sum(dim=1)
        return input_ids, mask, self._model_mask(mask)

    def _model_mask(self, mask):
        """The attention mask the model is given. Given a 2-D mask, transformers' SDPA
        path asks the device whether any token is padded (the host waits for the device)
        before it builds the 4-D one; the host knows the answer: no mask without padding
        (as transformers then), else the 4-D boolean mask, broadcast over heads and
        queries, that SDPA reads as it is. Other attention implementations, or models
        that do not build their masks through ``transformers.masking_utils``, get the
        2-D mask."""
        if self.model.config._attn_implementation != "sdpa" or not hasattr(
            self.model, "_create_attention_masks"
        ):
            return mask.long()
        if bool((mask.host_lengths == mask.shape[1]).all()):
            return None
        return mask[:, None, None, :]
