"""Speech and text encoder wrappers, built from configs with random weights."""

import os

import pytest
import torch
from transformers import (
    AutoConfig,
    Data2VecAudioConfig,
    HubertConfig,
    UniSpeechSatConfig,
    Wav2Vec2Config,
    Wav2Vec2ConformerConfig,
    WhisperConfig,
)

from crab.cli import UserError
from crab.compilers import compiler_missing
from crab.encoders import SpeechEncoder, TextEncoder
from crab.experiment import check_max_duration
from crab.runconfig import ConfigError
from tests.conftest import MINI_CONF, write_tiny_whisper

WAVLM = os.path.join(MINI_CONF, "wavlm_tiny")
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[16] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    vocab_size=32,
)


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    configs = {
        "hubert": HubertConfig(**SMALL),
        "wav2vec2": Wav2Vec2Config(**SMALL),
        "wav2vec2-conformer": Wav2Vec2ConformerConfig(**SMALL),
        "data2vec-audio": Data2VecAudioConfig(**{**SMALL, "num_conv_pos_embeddings": 2}),
        "unispeech-sat": UniSpeechSatConfig(**SMALL),
        "whisper": WhisperConfig(
            d_model=32,
            encoder_layers=2,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=80,
            vocab_size=100,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        ),
    }
    for name, config in configs.items():
        config.save_pretrained(root / name)
    return {name: str(root / name) for name in configs}


@pytest.mark.parametrize(
    "kind", ["wavlm", "hubert", "wav2vec2", "wav2vec2-conformer", "data2vec-audio", "unispeech-sat"]
)
def test_ssl_encoders_shapes_and_frame_mask(config_dirs, kind):
    source = WAVLM if kind == "wavlm" else config_dirs[kind]
    encoder = SpeechEncoder(source, pretrained=False).eval()
    wavs = torch.randn(2, 16000)
    hidden, mask = encoder(wavs, torch.tensor([1.0, 0.5]))
    assert hidden.shape[:2] == mask.shape and hidden.shape[-1] == encoder.output_dim
    assert mask.sum(1).tolist() == [49, 24]  # 20 ms frames of 1 s and 0.5 s
    assert encoder.min_samples == 400


@pytest.mark.parametrize(
    "model_type", ["wav2vec2-bert", "audio-spectrogram-transformer", "speecht5", "bert", "sew", "sew-d"]
)
def test_a_speech_encoder_of_another_family_is_refused_naming_the_source(tmp_path, model_type):
    """Models without a convolutional waveform encoder (w2v-BERT 2.0 and AST read
    spectrograms, SpeechT5 is an encoder-decoder, BERT reads text) are refused at once, not
    with an AttributeError inside the encoder; so are SEW and SEW-D, whose layers run at half
    the frame rate of the CNN (every hidden state but the upsampled last: masks twice too
    long). The config is read, no model is built."""
    from crab.encoders import UnsupportedModelError

    AutoConfig.for_model(model_type).save_pretrained(tmp_path)
    with pytest.raises(
        UnsupportedModelError, match=f"{tmp_path} is of model type {model_type}.*Whisper, or"
    ) as err:
        SpeechEncoder(str(tmp_path), pretrained=False)
    assert ("lower frame rate" in str(err.value)) == model_type.startswith("sew")


def test_whisper_encoder_runs_on_short_audio_without_30s_padding(config_dirs):
    encoder = SpeechEncoder(config_dirs["whisper"], pretrained=False).eval()
    wavs = torch.randn(2, 32000) * 0.1
    with torch.no_grad():
        hidden, mask = encoder(wavs, torch.tensor([1.0, 0.5]))
        alone, _ = encoder(wavs[1:, :16000], torch.tensor([1.0]))
    assert hidden.shape == (2, 100, 32)  # 2 s at 50 frames/s, not 1500 frames
    assert mask.sum(1).tolist() == [100, 50]
    # the padded utterance's real frames match the utterance encoded alone
    assert torch.allclose(hidden[1, :48], alone[0, :48], atol=1e-4)


def test_whisper_log_mel_stays_fp32_under_cpu_bf16_autocast(config_dirs):
    """``--precision=bf16`` on CPU (training, or crab-infer): transformers computes Whisper's
    log-mel with torch, which CPU autocast ran in bf16 and then could not hand to numpy
    (TypeError). The features are the fp32 ones; the layers above run in bf16."""
    encoder = SpeechEncoder(config_dirs["whisper"], pretrained=False).eval()
    wavs, lens = torch.randn(2, 16000) * 0.1, torch.tensor([1.0, 0.5])
    with torch.no_grad():
        fp32, mask = encoder(wavs, lens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = encoder(wavs, lens)
    assert bf16.shape == fp32.shape and mask.sum(1).tolist() == [50, 25]
    assert torch.allclose(bf16.float()[mask], fp32[mask], atol=2e-2)  # 4e-4 measured


def test_weighted_sum_of_layers_is_learned_and_disables_layerdrop():
    encoder = SpeechEncoder(WAVLM, pretrained=False, layer_weighting="weighted_sum", layerdrop=0.5)
    assert encoder.model.config.layerdrop == 0.0
    assert encoder.layer_weights.logits.shape == (3,)  # embeddings + 2 layers
    hidden, _ = encoder(torch.randn(1, 8000), torch.tensor([1.0]))
    hidden.sum().backward()
    assert encoder.layer_weights.logits.grad is not None
    with pytest.raises(ValueError, match="layer_weighting"):
        SpeechEncoder(WAVLM, pretrained=False, layer_weighting="first")
    # a dropped layer records no hidden state: a layer index would read another layer
    for choice, layerdrop in (("last", 0.5), (1, 0.0)):
        encoder = SpeechEncoder(WAVLM, pretrained=False, layer_weighting=choice, layerdrop=0.5)
        assert encoder.model.config.layerdrop == layerdrop, choice


def test_frozen_encoder_has_no_trainable_parameters_and_stays_in_eval():
    encoder = SpeechEncoder(WAVLM, pretrained=False, freeze=True)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.model.training
    hidden, _ = encoder(torch.randn(1, 8000), torch.tensor([1.0]))
    assert not hidden.requires_grad
    unfrozen = SpeechEncoder(WAVLM, pretrained=False, freeze_feature_extractor=False)
    assert all(p.requires_grad for p in unfrozen.model.feature_extractor.parameters())


def test_waveform_normalisation_uses_only_real_samples():
    encoder = SpeechEncoder(WAVLM, pretrained=False, normalize_waveform=True).eval()
    wav = torch.randn(8000) * 3 + 1
    with torch.no_grad():
        alone, _ = encoder(wav.unsqueeze(0), torch.tensor([1.0]))
        padded, _ = encoder(torch.cat([wav, torch.full((8000,), 5.0)]).unsqueeze(0), torch.tensor([0.5]))
    assert torch.allclose(alone[0], padded[0, : alone.shape[1]], atol=1e-5)


def test_text_encoder_pads_dynamically_and_truncates(tokenizer_dir):
    encoder = TextEncoder(
        os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False, max_length=12
    ).eval()
    hidden, mask = encoder(["hi", "thank you"])
    assert hidden.shape[1] == mask.shape[1] == max(mask.sum(1)).item() < 12
    hidden, mask = encoder(
        ["a very long sentence that goes well past twelve tokens, and then goes on some more"]
    )
    assert mask.shape[1] == 12


def test_text_max_length_beyond_the_position_table_is_refused_when_built(tokenizer_dir):
    """The tiny RoBERTa numbers 130 positions from padding_idx + 1 = 2: 128 tokens fit
    (a long transcript truncated there encodes); 129 failed with an index error at the
    first transcript that long, possibly epochs into training."""
    from crab.encoders import TextLengthError

    source = os.path.join(MINI_CONF, "roberta_tiny")
    encoder = TextEncoder(source, tokenizer=tokenizer_dir, pretrained=False, max_length=128).eval()
    _, mask = encoder(["word " * 300])
    assert mask.shape == (1, 128) and bool(mask.all())
    with pytest.raises(
        TextLengthError, match=f"^text_max_length: 129 tokens, but .*{source} numbers 128 positions"
    ):
        TextEncoder(source, tokenizer=tokenizer_dir, pretrained=False, max_length=129)


@pytest.mark.parametrize(
    "model_type, extra, capacity",
    [
        ("bert", {}, 512),
        ("roberta", {}, 510),
        ("distilbert", {}, 512),
        ("deberta-v2", {}, 512),
        ("deberta-v2", {"position_biased_input": False}, None),
    ],
)
def test_position_capacity_counts_the_absolute_positions_a_model_numbers(model_type, extra, capacity):
    """max_position_embeddings 512 each; RoBERTa's positions start at padding_idx + 1 = 2;
    DeBERTa-v3 (relative positions only) has no table and no limit."""
    from transformers import AutoModel

    from crab.encoders import position_capacity

    small = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50
    )
    if model_type == "distilbert":
        small = dict(dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=50)
    config = AutoConfig.for_model(model_type, max_position_embeddings=512, **small, **extra)
    assert position_capacity(AutoModel.from_config(config)) == capacity


@pytest.mark.parametrize("texts", [["a b c d e f", "a"], ["a b", "c d"]], ids=["padded", "unpadded"])
def test_text_encoder_gives_sdpa_the_mask_without_asking_the_device(monkeypatch, tokenizer_dir, texts):
    """transformers' SDPA path would ask the device whether any token is padded (a
    host wait on a GPU); the encoder's own mask gives the same states and gradients."""
    import transformers.masking_utils

    torch.manual_seed(0)
    encoder = TextEncoder(os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False)
    encoder.eval().double()  # float64: the two paths agree to rounding
    assert encoder.model.config._attn_implementation == "sdpa"

    def run():
        encoder.zero_grad()
        states, mask = encoder(texts)
        (states * mask[..., None]).pow(2).sum().backward()
        return states.detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None]

    with monkeypatch.context() as patch:  # transformers' own mask creation from the 2-D mask
        patch.setattr(TextEncoder, "_model_mask", lambda self, mask: mask.long())
        their_states, their_grads = run()

    def no_device_check(*args, **kwargs):
        raise AssertionError("transformers checked the padding on the device")

    monkeypatch.setattr(transformers.masking_utils, "_ignore_bidirectional_mask_sdpa", no_device_check)
    states, grads = run()
    assert torch.allclose(states, their_states, rtol=1e-10, atol=1e-12)
    assert len(grads) == len(their_grads) > 0
    assert all(torch.allclose(a, b, rtol=1e-8, atol=1e-12) for a, b in zip(grads, their_grads, strict=True))


def test_tokenizer_larger_than_model_vocabulary_is_an_error(tmp_path, tokenizer_dir):
    from transformers import RobertaConfig

    RobertaConfig(
        vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocabulary of 10"):
        TextEncoder(str(tmp_path), tokenizer=tokenizer_dir, pretrained=False)


def test_a_pretrained_text_encoder_refuses_a_tokenizer_of_another_vocabulary(tmp_path, tokenizer_dir):
    """A pretrained encoder saved with its tokenizer, given another one of no more tokens
    (the corpus's stage-3 BPE tokenizer with a pretrained RoBERTa): its ids named other
    tokens' embeddings, silently. A copy of its own tokenizer, or a source saved without
    one, is taken."""
    import shutil

    from transformers import AutoModel, AutoTokenizer

    from crab.encoders import ModelSourceError
    from crab.tokenizer import build_bpe_tokenizer

    config = AutoConfig.from_pretrained(os.path.join(MINI_CONF, "roberta_tiny"))
    bare, model = tmp_path / "bare", tmp_path / "model"
    AutoModel.from_config(config).save_pretrained(bare)
    shutil.copytree(bare, model)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model)
    other = tmp_path / "other"
    build_bpe_tokenizer(["completely different words here, and more of them"] * 8, str(other), vocab_size=280)
    with pytest.raises(ModelSourceError, match=f"^tokenizer: the tokenizer {other} has another vocabulary"):
        TextEncoder(str(model), tokenizer=str(other), pretrained=True)
    TextEncoder(str(model), tokenizer=tokenizer_dir, pretrained=True)
    extended = AutoTokenizer.from_pretrained(tokenizer_dir)  # saved with a token more: same ids
    extended.add_tokens(["<laugh>"])
    extended.save_pretrained(model)
    TextEncoder(str(model), tokenizer=tokenizer_dir, pretrained=True)
    TextEncoder(str(bare), tokenizer=str(other), pretrained=True)
    TextEncoder(str(model), tokenizer=str(other), pretrained=False)  # random weights: any tokenizer


@pytest.mark.parametrize("model_type", ["t5", "bart", "wavlm", "audio-spectrogram-transformer"])
def test_a_text_encoder_of_another_family_is_refused_naming_the_source(tmp_path, tokenizer_dir, model_type):
    """An encoder-decoder (T5 stopped at its first batch, BART gave its decoder's states)
    or a model of audio is refused when built, naming the source."""
    from crab.encoders import UnsupportedModelError

    AutoConfig.for_model(model_type).save_pretrained(tmp_path)
    with pytest.raises(
        UnsupportedModelError, match=f"{tmp_path} is of model type {model_type}.*not an encoder-"
    ):
        TextEncoder(str(tmp_path), tokenizer=tokenizer_dir, pretrained=False)


def test_a_tokenizer_without_a_padding_token_is_refused(tmp_path, tokenizer_dir):
    """A GPT-2-style tokenizer has no padding token: refused when built, not at the first
    batch of two transcripts (transformers' 'Asking to pad' ValueError)."""
    from transformers import AutoTokenizer

    from crab.encoders import ModelSourceError

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(
        ModelSourceError, match=f"^tokenizer: the tokenizer of {tmp_path} has no padding token"
    ):
        TextEncoder(os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=str(tmp_path), pretrained=False)


def test_a_left_padding_tokenizer_gives_the_prediction_of_the_transcript_alone(tmp_path, tokenizer_dir):
    """A tokenizer saved to pad on the left (XLNet's, many decoder-only models') is still
    padded on the right: the GRU packs each transcript from its first token, so left
    padding read the padding as the transcript and changed a prediction with its batch."""
    from transformers import AutoTokenizer

    from crab.model import Crab

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
    tokenizer.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = Crab(
        num_classes=4,
        text_encoder=lambda: TextEncoder(
            os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=str(tmp_path), pretrained=False
        ),
        modality="text",
        hidden_dim=8,
        bottleneck_dim=8,
    ).eval()
    assert model.text_encoder.tokenizer.padding_side == "left"
    texts = ["a much longer transcript than the other one", "short"]
    with torch.no_grad():
        batch, _ = model(texts=texts)
        alone, _ = model(texts=texts[1:])
    torch.testing.assert_close(batch[1], alone[0], rtol=1e-5, atol=1e-6)


def test_a_sentencepiece_only_tokenizer_loads(tmp_path):
    """A DeBERTa-v3 directory holds its tokenizer as spm.model alone (no tokenizer.json):
    transformers converts it with sentencepiece and protobuf (tools/requirements.txt), and
    without protobuf said only that `tiktoken` was required."""
    import sentencepiece
    from transformers import DebertaV2Config

    from tests.conftest import TEXTS

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS * 4),
        model_prefix=str(tmp_path / "spm"),
        vocab_size=40,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        minloglevel=2,
    )
    (tmp_path / "spm.vocab").unlink()
    DebertaV2Config(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        relative_attention=True,
        position_buckets=8,
        pos_att_type=["p2c", "c2p"],
        type_vocab_size=0,
        pad_token_id=0,
    ).save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "spm.model"]
    encoder = TextEncoder(str(tmp_path), pretrained=False).eval()
    hidden, mask = encoder(["I feel happy today", "a"])
    assert encoder.tokenizer.pad_token_id == 0 and mask.sum(1).tolist()[1] < mask.shape[1]
    assert hidden.shape[:2] == mask.shape


def test_whisper_frontend_freezes_with_the_feature_extractor_flag(config_dirs):
    encoder = SpeechEncoder(config_dirs["whisper"], pretrained=False)
    assert not any(p.requires_grad for p in encoder.model.conv1.parameters())
    assert all(p.requires_grad for p in encoder.model.layers.parameters())
    encoder = SpeechEncoder(config_dirs["whisper"], pretrained=False, freeze_feature_extractor=False)
    assert all(p.requires_grad for p in encoder.model.conv2.parameters())


def test_state_normalization_uses_real_frames_only_and_is_saved():
    from crab.encoders import StateNormalization

    norm = StateNormalization(num_states=2, dim=1)
    states = torch.tensor(
        [
            [[[1.0], [10.0]], [[3.0], [30.0]], [[99.0], [99.0]]],
            [[[5.0], [50.0]], [[0.0], [0.0]], [[0.0], [0.0]]],
        ]
    )  # (2, 3, 2, 1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    norm.accumulate(states[:1], mask[:1])
    norm.accumulate(states[1:], mask[1:])
    norm.finish()
    # real frames of layer 0: 1, 3, 5 -> mean 3, population std sqrt(8/3); layer 1: ten times that
    assert norm.mean.squeeze(1).tolist() == pytest.approx([3.0, 30.0])
    assert norm.std.squeeze(1).tolist() == pytest.approx([(8 / 3) ** 0.5, 10 * (8 / 3) ** 0.5])
    assert norm(states)[0, 0, :, 0].tolist() == pytest.approx([-2 / (8 / 3) ** 0.5] * 2)
    restored = StateNormalization(2, 1)
    restored.load_state_dict(norm.state_dict())
    assert bool(restored.ready) and torch.equal(restored.std, norm.std)


def test_one_chosen_hidden_state_is_read(tokenizer_dir):
    torch.manual_seed(0)
    every = SpeechEncoder(WAVLM, pretrained=False, layer_weighting="weighted_sum").eval()
    chosen = SpeechEncoder(WAVLM, pretrained=False, layer_weighting=1).eval()
    chosen.model.load_state_dict(every.model.state_dict())
    wavs, lens = torch.randn(2, 8000), torch.tensor([1.0, 0.6])
    with torch.no_grad():
        states, mask = every.states(wavs, lens)
        hidden, chosen_mask = chosen(wavs, lens)
    assert chosen.num_states == 1 and chosen.layer_weights is None
    torch.testing.assert_close(hidden, states[:, :, 1])
    assert torch.equal(mask, chosen_mask)
    text = TextEncoder(
        os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False, layer_weighting=0
    )
    embeddings, _ = text(["a short one", "and a longer sentence here"])
    assert embeddings.shape[-1] == text.output_dim
    for bad in (3, -1, True):  # the tiny WavLM has hidden states 0..2
        with pytest.raises(ValueError, match="hidden-state index 0..2"):
            SpeechEncoder(WAVLM, pretrained=False, layer_weighting=bad)


@pytest.mark.parametrize("read,k", [(1, 1), (2, 1), (2, 2)])
def test_whisper_top_layer_finetuning_equals_the_full_encoder_and_trains_only_those_layers(
    config_dirs, read, k
):
    torch.manual_seed(0)
    every = SpeechEncoder(config_dirs["whisper"], pretrained=False, layer_weighting="weighted_sum").eval()
    top = SpeechEncoder(config_dirs["whisper"], pretrained=False, layer_weighting=read, finetune_top_layers=k)
    top.model.load_state_dict(every.model.state_dict())
    wavs, lens = torch.randn(2, 16000) * 0.1, torch.tensor([1.0, 0.55])
    with torch.no_grad():
        all_states, mask = every.states(wavs, lens)
        below, below_mask = top.eval().states(wavs, lens)
        output, _ = top(wavs, lens)
    # states() stops below the tuned layers; select() runs them (and the final norm for the last layer)
    assert torch.equal(below_mask, mask) and below.shape[2] == 1
    torch.testing.assert_close(below[:, :, 0], all_states[:, :, read - k])
    torch.testing.assert_close(output[mask], all_states[:, :, read][mask], atol=1e-5, rtol=1e-5)

    tuned = {f"layers.{i}." for i in range(read - k, read)} | ({"layer_norm."} if read == 2 else set())
    trainable = {n for n, p in top.model.named_parameters() if p.requires_grad}
    assert trainable and all(any(n.startswith(t) for t in tuned) for n in trainable)
    assert {id(p) for p in top.encoder_parameters()} == {
        id(p) for p in top.model.parameters() if p.requires_grad
    }
    frozen = top.frozen_parameter_names()
    assert not set(frozen) & trainable and "conv1.weight" in frozen and "embed_positions.weight" in frozen
    # the frozen part stays in eval mode (no dropout), the tuned layers follow train()
    top.train()
    assert not top.model.conv1.training and top.model.layers[read - 1].training
    assert top.model.layers[0].training == (read - k == 0)
    hidden, _ = top(wavs, lens)
    hidden.sum().backward()
    assert all(p.grad is not None for n, p in top.model.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in top.model.named_parameters() if n not in trainable)


def test_state_normalization_applies_to_the_output_of_the_tuned_top_layers(config_dirs):
    """With ``finetune_top_layers`` and ``normalize_states``, the statistics are those of the
    tuned layers' output (``readout``, what ``fit_state_normalization`` accumulates): they
    standardize that output, not the cached state below the layers."""
    torch.manual_seed(0)
    encoder = SpeechEncoder(
        config_dirs["whisper"],
        pretrained=False,
        layer_weighting=2,
        finetune_top_layers=1,
        normalize_states=True,
    ).eval()
    wavs, lens = torch.randn(2, 16000) * 0.1, torch.tensor([1.0, 0.55])
    with torch.no_grad():
        encoder.state_norm.mean.fill_(0.5), encoder.state_norm.std.fill_(2.0)
        states, mask = encoder.states(wavs, lens)
        expected = (encoder.readout(states, mask)[:, :, 0] - 0.5) / 2.0
        torch.testing.assert_close(encoder.select(states, mask), expected)


def test_top_layer_finetuning_is_checked(config_dirs):
    whisper = config_dirs["whisper"]
    with pytest.raises(ValueError, match="needs one layer read"):
        SpeechEncoder(whisper, pretrained=False, layer_weighting="weighted_sum", finetune_top_layers=1)
    with pytest.raises(ValueError, match="at least 2 layers below"):
        SpeechEncoder(whisper, pretrained=False, layer_weighting=1, finetune_top_layers=2)
    with pytest.raises(ValueError, match="needs freeze_speech_encoder: false"):
        SpeechEncoder(whisper, pretrained=False, freeze=True, finetune_top_layers=1)
    with pytest.raises(ValueError, match=">= 0"):
        SpeechEncoder(whisper, pretrained=False, finetune_top_layers=-1)
    with pytest.raises(ValueError, match="implemented for Whisper encoders, not .*hubert"):
        SpeechEncoder(config_dirs["hubert"], pretrained=False, finetune_top_layers=1)


def test_top_layer_finetuning_of_another_family_is_one_line_naming_the_key(tmp_path):
    """``finetune_top_speech_layers`` with a HuBERT source: the command's one-line error
    names the source's key, the model type and the yaml key to set (not the encoder's argument
    ``finetune_top_layers``, which no yaml has), not a ValueError traceback."""
    from crab.runconfig import load_hparams
    from tests.conftest import ROOT

    HubertConfig(**SMALL).save_pretrained(tmp_path / "hubert")
    config = os.path.join(ROOT, "egs", "TEMPLATE", "conf", "crab_tiny.yaml")
    overrides = {
        "data_root": str(tmp_path),
        "data_folder": str(tmp_path),
        "output_folder": str(tmp_path / "run"),
        "classes": ["a", "b"],
        "modality": "speech",
        "speech_encoder_source": str(tmp_path / "hubert"),
        "finetune_top_speech_layers": 1,
        "layer_weighting": 2,
    }
    with pytest.raises(
        UserError,
        match="^speech_encoder_source: finetune_top_speech_layers is implemented for Whisper "
        f"encoders, not {tmp_path}/hubert \\(model type hubert\\)",
    ):
        load_hparams(config, overrides)


def test_frozen_feature_extractor_builds_no_graph_and_gets_no_gradient():
    """The frozen CNN runs without autograd (transformers' own ``_requires_grad`` flag
    would otherwise make its output require grad and run its backward); the
    transformer layers above it still train."""
    encoder = SpeechEncoder(
        os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False, freeze_feature_extractor=True
    ).train()
    outputs = []
    encoder.model.feature_extractor.register_forward_hook(lambda m, i, out: outputs.append(out))
    hidden, mask = encoder(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))
    hidden[mask].sum().backward()
    assert outputs[0].grad_fn is None and not outputs[0].requires_grad
    assert all(p.grad is None for p in encoder.model.feature_extractor.parameters())
    layer_grads = [p.grad for p in encoder.model.encoder.layers.parameters()]
    assert layer_grads and all(g is not None for g in layer_grads)
    assert any(g.abs().sum() > 0 for g in layer_grads)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_trained_feature_extractor_gets_gradients_but_the_waveform_none(checkpointing):
    """A trained CNN: its weights get gradients (with gradient checkpointing too), the
    waveform none (transformers marked it as requiring grad, and the backward pass
    computed its gradient through the first convolution)."""
    encoder = SpeechEncoder(
        WAVLM, pretrained=False, freeze_feature_extractor=False, gradient_checkpointing=checkpointing
    ).train()
    inputs = []
    encoder.model.feature_extractor.conv_layers[0].register_forward_hook(
        lambda m, i, out: inputs.append(i[0])
    )
    hidden, mask = encoder(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))
    hidden[mask].sum().backward()
    assert not inputs[0].requires_grad
    grads = [p.grad for p in encoder.model.feature_extractor.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("frozen", [True, False])
def test_torch_compile_leaves_the_feature_extractor_eager(frozen):
    """``--compile``: dynamo skips the CNN, frozen or trained (it runs eagerly, as
    without compile)."""
    from torch._dynamo.testing import CompileCounter

    encoder = SpeechEncoder(WAVLM, pretrained=False, freeze_feature_extractor=frozen).train()
    counter = CompileCounter()
    torch._dynamo.reset()
    features = torch.compile(encoder.model.feature_extractor, backend=counter)(torch.randn(2, 8000))
    assert features.shape[-1] == 24
    assert counter.frame_count == 0


def test_torch_compile_does_not_compile_the_text_encoder_again_for_new_transcripts(tokenizer_dir):
    """``--compile``: the tokenization runs eagerly, so the compiled code sees tensors,
    not strings; traced, each batch's strings were guarded on and compiled again, until
    dynamo's recompile limit left the text encoder eager."""
    from torch._dynamo.testing import CompileCounter

    encoder = TextEncoder(
        os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False
    ).train()
    counter = CompileCounter()
    torch._dynamo.reset()
    states = torch.compile(lambda texts: encoder.states(texts)[0], backend=counter, dynamic=True)
    states(["what a wonderful day", "leave me alone"])
    compiled = counter.frame_count
    for texts in (["I am so sad today", "no"], ["get out of here", "fine, thanks a lot"]):
        assert states(texts).shape[:2] == encoder.states(texts)[0].shape[:2]
    assert compiled > 0 and counter.frame_count == compiled


def test_torch_compile_copies_host_tensors_to_the_gpu_without_pinning():
    """``--compile`` on CUDA: eagerly, a host tensor is pinned before its copy to the GPU;
    traced, it is not (dynamo cannot trace ``pin_memory``: the first training step failed
    with "NYI: aten._pin_memory.default")."""
    from crab.masks import pins_first

    cuda = torch.device("cuda")
    traced = torch.compile(lambda t: t + int(pins_first(cuda)), backend="eager", fullgraph=True)
    torch._dynamo.reset()
    assert pins_first(cuda) and not pins_first(torch.device("cpu"))
    assert traced(torch.zeros(1)).item() == 0


@pytest.mark.slow
@pytest.mark.skipif(compiler_missing("cpu") is not None, reason=str(compiler_missing("cpu")))
# torch's own, as inductor loads and traces transformers
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_speech_encoder_with_frozen_feature_extractor_compiles_for_dynamic_lengths():
    """SpeechBrain's ``--compile --compile_using_dynamic_shape_tracing`` on a speech
    encoder with its CNN frozen (the paper's configs): training steps of three lengths and
    two batch sizes through inductor, compiled at the first step only. With the CNN
    compiled in one graph with the layers above, inductor (torch 2.13) failed at the first
    step (ValueRangeError); with the positional convolution compiled, each new length
    was compiled again (its input gradient's lowering fixed the number of frames)."""
    from torch._inductor.compile_fx import compile_fx

    encoder = SpeechEncoder(WAVLM, pretrained=False, freeze_feature_extractor=True, layerdrop=0.0).train()
    graphs = []

    def inductor(graph, example_inputs):
        graphs.append(graph)
        return compile_fx(graph, example_inputs)

    torch._dynamo.reset()
    states = torch.compile(lambda wavs, lens: encoder.states(wavs, lens)[0], backend=inductor, dynamic=True)
    compiled = []
    for batch, samples in ((4, 16000), (4, 12164), (3, 14000)):
        out = states(torch.randn(batch, samples), torch.linspace(1.0, 0.7, batch))
        out.sum().backward()
        assert out.shape[1] == encoder.model._get_feat_extract_output_lengths(samples)
        compiled.append(len(graphs))
    assert compiled[0] > 0 and compiled == compiled[:1] * 3
    assert all(p.grad is None for p in encoder.model.feature_extractor.parameters())
    trained = [*encoder.model.encoder.layers.parameters(), *encoder.model.encoder.pos_conv_embed.parameters()]
    assert all(p.grad is not None for p in trained)


def test_wavlm_position_bias_is_transformers_own_computed_on_the_device():
    """The bucket of each frame pair is computed where the bias is (transformers builds it
    on the host and copies it: a wait for the device); the same bias, near and beyond the
    largest bucketed distance."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    encoder = SpeechEncoder(WAVLM, pretrained=False)
    biased = [
        m for m in encoder.model.modules() if isinstance(m, WavLMAttention) and hasattr(m, "rel_attn_embed")
    ]
    assert biased
    for attention in biased:
        for frames in (1, 7, attention.max_distance + 30):
            torch.testing.assert_close(
                attention.compute_bias(frames, frames),
                WavLMAttention.compute_bias(attention, frames, frames),
                rtol=0,
                atol=0,
            )


def test_wavlm_frame_mask_comes_from_the_host_lengths():
    """The frame mask the encoder's layers get is transformers' own, computed from the
    samples' lengths on the host (theirs counts them on the device, then indexes: a wait
    for the device); with no lengths given (another caller), transformers' own runs."""
    encoder = SpeechEncoder(WAVLM, pretrained=False)
    model = encoder.model
    samples = torch.tensor([16000, 12345, 401, 16000])
    sample_mask = (torch.arange(16000) < samples.unsqueeze(1)).long()
    frames = int(model._get_feat_extract_output_lengths(16000))
    theirs = type(model)._get_feature_vector_attention_mask(model, frames, sample_mask, add_adapter=False)
    model.crab_sample_lens = samples
    try:
        ours = model._get_feature_vector_attention_mask(frames, sample_mask, add_adapter=False)
    finally:
        model.crab_sample_lens = None
    assert ours.dtype == torch.bool and torch.equal(ours, theirs) and not theirs.all()
    assert torch.equal(
        model._get_feature_vector_attention_mask(frames, sample_mask, add_adapter=False), theirs
    )
    # in a forward pass: the states of the real frames do not depend on the padding
    encoder.eval()
    wavs = torch.randn(2, 16000)
    batch, mask = encoder(wavs, torch.tensor([1.0, 0.5]))
    alone, _ = encoder(wavs[1:, :8000], torch.tensor([1.0]))
    n = int(mask[1].sum())
    assert n == alone.shape[1] and not mask[1].all()
    torch.testing.assert_close(batch[1, :n], alone[0], rtol=1e-4, atol=1e-5)


def test_encoder_masks_keep_their_lengths_on_the_host(tokenizer_dir):
    """The GRU's packing reads the lengths from the host copy (``crab.masks``), which
    agrees with the mask, for CPU and device-side relative lengths alike."""
    from crab.masks import host_lengths

    speech = SpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False).eval()
    wavs = torch.randn(3, 8000)
    states, mask = speech(wavs, torch.tensor([1.0, 0.5, 0.25]))
    assert mask.host_lengths.device.type == "cpu" and mask.host_lengths.dtype == torch.long
    assert mask.host_lengths.tolist() == mask.sum(dim=1).tolist()
    # an array of lengths (what CrabBrain passes: DDP would move a tensor to the device)
    from_array, array_mask = speech(wavs, torch.tensor([1.0, 0.5, 0.25]).numpy())
    assert torch.equal(array_mask, mask) and torch.equal(from_array, states)
    text = TextEncoder(
        os.path.join(MINI_CONF, "roberta_tiny"), tokenizer=tokenizer_dir, pretrained=False
    ).eval()
    _, text_mask = text(["a b c d e f", "a"])
    assert text_mask.host_lengths.tolist() == text_mask.sum(dim=1).tolist()
    assert host_lengths(text_mask[:, :]).tolist() == text_mask.sum(dim=1).tolist()  # no copy kept: counted


@pytest.mark.parametrize("which", ["speech", "text"])
def test_gradient_checkpointing_gives_the_same_gradients(which, tokenizer_dir):
    """``gradient_checkpointing: true`` recomputes the layers in the backward pass (each
    layer runs twice) and changes neither the output nor the gradients."""

    def build(checkpointing):
        torch.manual_seed(0)
        if which == "speech":
            return SpeechEncoder(
                os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False, gradient_checkpointing=checkpointing
            ).train()
        return TextEncoder(
            os.path.join(MINI_CONF, "roberta_tiny"),
            tokenizer=tokenizer_dir,
            pretrained=False,
            gradient_checkpointing=checkpointing,
        ).train()

    inputs = (
        (torch.randn(2, 8000, generator=torch.Generator().manual_seed(1)), torch.tensor([1.0, 0.7]))
        if which == "speech"
        else (["a b c d e f g", "a b"],)
    )
    results = []
    for checkpointing in (False, True):
        encoder = build(checkpointing)
        layers = encoder.model.encoder.layers if which == "speech" else encoder.model.encoder.layer
        calls = []
        # A hook inside the layer counts its forward passes.
        layers[0].attention.register_forward_hook(lambda *args, calls=calls: calls.append(1))
        torch.manual_seed(2)  # the same dropout masks (checkpointing replays the RNG state)
        hidden, mask = encoder(*inputs)
        (hidden[mask] ** 2).mean().backward()
        assert len(calls) == (2 if checkpointing else 1)
        grads = {n: p.grad for n, p in encoder.model.named_parameters() if p.grad is not None}
        results.append((hidden.detach(), grads))
    (plain, plain_grads), (checkpointed, checkpointed_grads) = results
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == checkpointed_grads.keys() and len(plain_grads) > 10
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_checkpointing_must_be_a_boolean():
    with pytest.raises(ValueError, match="gradient_checkpointing must be true or false"):
        SpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False, gradient_checkpointing="yes")


@pytest.mark.parametrize("kind", ["hubert", "wav2vec2", "wav2vec2-conformer", "unispeech-sat", "wavlm"])
def test_the_last_hidden_state_index_reads_the_encoder_output(config_dirs, kind):
    """``layer_weighting: N`` (and the last of ``weighted_sum``'s states) is the output that
    ``last`` reads: for the stable-layer-norm models and the conformer, after the
    encoder's final layer norm, which transformers records the last hidden state before."""
    source = WAVLM if kind == "wavlm" else config_dirs[kind]
    wavs, lens = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0)), torch.tensor([1.0, 0.6])
    torch.manual_seed(0)
    last = SpeechEncoder(source, pretrained=False).eval()
    with torch.no_grad():
        last.model.encoder.layer_norm.weight.mul_(3.0)  # a final norm that is not the identity
        expected, mask = last(wavs, lens)
    num_layers = last.num_layers
    for choice in (num_layers, "weighted_sum"):
        encoder = SpeechEncoder(source, pretrained=False, layer_weighting=choice).eval()
        encoder.model.load_state_dict(last.model.state_dict())
        with torch.no_grad():
            states, states_mask = encoder.states(wavs, lens)
        assert torch.equal(states_mask, mask)
        torch.testing.assert_close(states[:, :, -1][mask], expected[mask], msg=str(choice))


@pytest.mark.parametrize("choice", [1, "weighted_sum"])
def test_hidden_states_before_an_adapter_get_the_mask_of_their_frames(tmp_path, choice):
    """With ``add_adapter`` the output has fewer frames than the hidden states: a chosen
    layer or the weighted sum (before the adapter) is masked by the CNN's frame lengths,
    so an utterance gives the same states alone as padded in a batch."""
    Wav2Vec2Config(**SMALL, add_adapter=True, output_hidden_size=32, num_adapter_layers=1).save_pretrained(
        tmp_path
    )
    encoder = SpeechEncoder(str(tmp_path), pretrained=False, layer_weighting=choice).eval()
    short = torch.randn(8000, generator=torch.Generator().manual_seed(0))
    batch = torch.stack([torch.nn.functional.pad(short, (0, 24000)), torch.randn(32000)])
    with torch.no_grad():
        alone, alone_mask = encoder.states(short[None], torch.tensor([1.0]))
        batched, mask = encoder.states(batch, torch.tensor([0.25, 1.0]))
    frames = int(encoder.model._get_feat_extract_output_lengths(8000, add_adapter=False))
    assert alone.shape[1] == frames and alone_mask.sum() == frames and mask[0].sum() == frames
    torch.testing.assert_close(batched[0, :frames], alone[0], rtol=1e-4, atol=1e-5)


def test_a_conformer_is_marked_padding_dependent(config_dirs):
    """wav2vec2-conformer's convolution modules read the padded frames despite the mask:
    its states depend on the batch, which ``padding_dependent`` (the evaluation record's
    batching) says."""
    encoder = SpeechEncoder(config_dirs["wav2vec2-conformer"], pretrained=False).eval()
    short = torch.randn(8000, generator=torch.Generator().manual_seed(0))
    batch = torch.stack([torch.nn.functional.pad(short, (0, 24000)), torch.randn(32000)])
    with torch.no_grad():
        alone, _ = encoder(short[None], torch.tensor([1.0]))
        batched, _ = encoder(batch, torch.tensor([0.25, 1.0]))
    assert not torch.allclose(batched[0, : alone.shape[1]], alone[0], atol=1e-4)
    assert encoder.padding_dependent


def test_a_max_duration_beyond_whisper_s_30_s_is_refused_before_training(tmp_path):
    """Whisper's feature extractor cuts audio at 30 s: a 60 s max_duration (or none) trained every
    longer utterance on its first 30 s, while the run recorded 60."""
    whisper = SpeechEncoder(str(write_tiny_whisper(tmp_path / "whisper")), pretrained=False)
    wav = 0.1 * torch.randn(1, 31 * 16000)
    _, cut = whisper.states(wav, torch.ones(1))
    _, full = whisper.states(wav[:, : 30 * 16000], torch.ones(1))
    assert cut.shape == full.shape == (1, 1500)  # 31 s read as 30 s
    assert whisper.max_seconds == 30.0
    model = lambda encoder: type("Model", (), {"speech_encoder": encoder})()  # noqa: E731
    for duration in (60.0, 30.5, None):
        with pytest.raises(
            ConfigError, match=f"^max_duration: {duration}, .* reads at most 30 s .* to 30 or less"
        ):
            check_max_duration({"model": model(whisper), "max_duration": duration})
    check_max_duration({"model": model(whisper), "max_duration": 30.0})
    wavlm = SpeechEncoder(os.path.join(MINI_CONF, "wavlm_tiny"), pretrained=False)
    check_max_duration({"model": model(wavlm), "max_duration": None})  # no limit
    check_max_duration({"model": model(None), "max_duration": None})  # text-only


def test_relative_lengths_give_back_every_length():
    """SpeechBrain's relative lengths (``n / max`` in float32, as ``PaddedBatch`` makes them)
    turn back into ``n`` for every ``n`` (rounded: a float32 ratio times ``max`` falls just
    below or above the integer)."""
    from speechbrain.dataio.batch import PaddedBatch

    from crab.encoders import relative_to_absolute

    for longest in (7, 49, 601, 1499, 16000):
        lengths = list(range(1, longest + 1))
        items = [{"x": torch.zeros(n)} for n in lengths]
        relative = PaddedBatch(items).x.lengths
        assert relative_to_absolute(relative, longest).tolist() == lengths, longest


def test_weighted_sum_of_layers_is_the_softmax_weighted_sum():
    from crab.encoders import LayerWeights

    weights = LayerWeights(3)
    with torch.no_grad():
        weights.logits.copy_(torch.log(torch.tensor([1.0, 2.0, 5.0])))  # softmax: 0.125, 0.25, 0.625
    states = torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 3, 1)
    assert weights(states).item() == pytest.approx(0.125 + 2.5 + 62.5)


def test_a_group_norm_model_reads_its_batch_zero_padded_without_an_attention_mask(tmp_path):
    """A speech encoder whose CNN is group-normalised (wav2vec 2.0 Base) was trained without an
    attention mask, on zero-padded audio (transformers' documentation): it is given its batch
    so, each waveform normalised over its own samples, the padding zeros after that."""
    Wav2Vec2Config(**{**SMALL, "feat_extract_norm": "group", "do_stable_layer_norm": False}).save_pretrained(
        tmp_path
    )
    encoder = SpeechEncoder(str(tmp_path), pretrained=False, normalize_waveform="utterance").eval()
    assert encoder.padding_dependent
    generator = torch.Generator().manual_seed(0)
    wavs = [torch.randn(8000, generator=generator) * 0.3 + 0.1, torch.randn(16000, generator=generator)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    expected_input = torch.nn.utils.rnn.pad_sequence(
        [(w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7) for w in wavs], batch_first=True
    )
    with torch.no_grad():
        hidden, mask = encoder(batch, torch.tensor([0.5, 1.0]))
        expected = encoder.model(expected_input).last_hidden_state
    torch.testing.assert_close(hidden[mask], expected[mask], rtol=1e-4, atol=1e-4)


def test_whisper_encoder_is_transformers_one_and_masks_every_frame_of_an_utterance(tmp_path):
    """The Whisper encoder run on the batch's own length gives transformers' WhisperEncoder output
    (final layer norm included) where that one reads its whole window (here 1 s), and an
    utterance's mask covers each of its frames, also for an odd number of log-mel frames (the
    second convolution's stride 2 rounds up), alone and padded in a batch with a longer one."""
    write_tiny_whisper(tmp_path, max_source_positions=50)  # a window of 1 s
    torch.manual_seed(0)
    encoder = SpeechEncoder(str(tmp_path), pretrained=False).eval()
    with torch.no_grad():
        encoder.model.layer_norm.weight.mul_(3.0)  # a final norm that is not the identity
    wav = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden, _ = encoder(wav, torch.ones(1))
        features = encoder.features(
            [wav[0].numpy()], sampling_rate=16000, padding="longest", return_tensors="pt"
        ).input_features
        torch.testing.assert_close(hidden, encoder.model(features).last_hidden_state)
        for samples in (8800, 9120):  # 55 and 57 log-mel frames: 28 and 29 encoder frames
            alone, alone_mask = encoder(wav[:, :samples], torch.ones(1))
            assert alone_mask.sum() == alone.shape[1] == (samples // 160 + 1) // 2
            batched, mask = encoder(wav, torch.tensor([samples / 16000, 1.0]))
            assert mask[0].sum() == alone.shape[1]


def test_the_wavlm_attention_takes_the_output_attentions_argument_of_older_transformers():
    """transformers 5.0-5.15 call WavLM's attention with a fourth positional argument
    (``output_attentions``), which the replaced attention refused with a TypeError."""
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    torch.manual_seed(0)
    encoder = SpeechEncoder(WAVLM, pretrained=False).eval()
    wavs, lens = torch.randn(2, 8000) * 0.1, torch.tensor([1.0, 0.6])
    with torch.no_grad():
        expected, _ = encoder.states(wavs, lens)
        for module in encoder.model.modules():
            if isinstance(module, WavLMAttention):
                attend = module.torch_multi_head_self_attention
                module.torch_multi_head_self_attention = lambda h, m, b, f=attend: f(h, m, b, False)
        older, _ = encoder.states(wavs, lens)
    assert torch.equal(older, expected)


@pytest.mark.parametrize("draws", [True, False])
def test_a_frozen_encoder_leaves_the_cpu_rng_where_it_was(monkeypatch, draws):
    """Before 5.23 transformers drew a LayerDrop number in every WavLM layer in eval mode too:
    a frozen encoder moved the RNG of the head's dropout, so a training on cached states
    differed from the same training end to end. Then the encoder puts the RNG back."""
    import crab.encoders

    monkeypatch.setattr(crab.encoders, "_LAYERDROP_DRAWS_IN_EVAL", draws)
    encoder = SpeechEncoder(WAVLM, pretrained=False, freeze=True).eval()

    def layerdrop_draw(*_):  # as the old LayerDrop did
        torch.rand(1)

    encoder.model.register_forward_pre_hook(layerdrop_draw)
    wavs, lens = torch.randn(2, 8000) * 0.1, torch.tensor([1.0, 0.6])
    before = torch.get_rng_state()
    with torch.no_grad():
        encoder.states(wavs, lens)
    assert torch.equal(torch.get_rng_state(), before) == draws
