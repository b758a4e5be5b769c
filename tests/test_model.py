"""Masks, batch independence, and the legs' absence from the inference model."""

import math

import pytest
import torch

from crab.legs import LEG_NAMES, SupervisionLegs
from crab.model import non_finite_rows
from crab.modules import AttentionPooling, ClassifierBlock, CrossModalBlock, UnimodalBlock, masked_mean


def test_attention_pooling_hand_computed_with_mask():
    pool = AttentionPooling(2, scaled=True)
    with torch.no_grad():
        pool.query.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[[2.0, 1.0], [0.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[True, True, False]])
    # scores 2/sqrt(2), 0/sqrt(2); the padded frame gets no weight
    w = torch.softmax(torch.tensor([2 / math.sqrt(2), 0.0]), 0)
    expected = w[0] * x[0, 0] + w[1] * x[0, 1]
    assert torch.allclose(pool(x, mask)[0], expected, atol=1e-6)
    pool_unscaled = AttentionPooling(2, scaled=False)
    with torch.no_grad():
        pool_unscaled.query.copy_(torch.tensor([1.0, 0.0]))
    w = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert torch.allclose(pool_unscaled(x, mask)[0], w[0] * x[0, 0] + w[1] * x[0, 1], atol=1e-6)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [50.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert masked_mean(x, mask).squeeze(1).tolist() == [2.0, 4.0]
    # a row without a real frame has mean 0, not 0 / 0
    assert masked_mean(x, torch.tensor([[False] * 3, [True] * 3])).squeeze(1).tolist() == [0.0, 4.0]


def test_unimodal_block_padding_does_not_leak():
    torch.manual_seed(0)
    block = UnimodalBlock(5, 4)
    x = torch.randn(1, 3, 5)
    padded = torch.cat([x, torch.randn(1, 4, 5) * 100], dim=1)
    _, alone = block(x, torch.ones(1, 3, dtype=torch.bool))
    mask = torch.tensor([[True] * 3 + [False] * 4])
    _, batched = block(padded, mask)
    assert torch.allclose(alone, batched[:, :3], atol=1e-6)
    assert (batched[:, 3:] == 0).all()


def test_unimodal_block_returns_rows_in_their_order_whatever_their_lengths():
    """Packing sorts the rows by length on the host: the outputs come back in the
    batch's own order, each as if alone."""
    torch.manual_seed(0)
    block = UnimodalBlock(5, 4)
    lengths = [2, 6, 4, 6, 1]
    x = torch.randn(len(lengths), 6, 5)
    mask = torch.arange(6) < torch.tensor(lengths).unsqueeze(1)
    _, batched = block(x, mask)
    for i, n in enumerate(lengths):
        _, alone = block(x[i : i + 1, :n], torch.ones(1, n, dtype=torch.bool))
        assert torch.allclose(batched[i, :n], alone[0], atol=1e-6) and (batched[i, n:] == 0).all()


def test_unimodal_block_output_keeps_the_input_length_when_no_row_fills_the_batch():
    """``pad_packed_sequence`` pads to the longest real row; the block pads to the input's
    length, so its output lines up with the mask (and the cross-modal key masks) also when
    every row is padded (relative lengths all below 1)."""
    torch.manual_seed(0)
    block = UnimodalBlock(5, 4)
    x = torch.randn(2, 6, 5)
    mask = torch.arange(6) < torch.tensor([[4], [2]])  # longest real row: 4 of 6 frames
    projected, out = block(x, mask)
    assert projected.shape == (2, 6, 4) and out.shape == (2, 6, 8)
    assert (out[0, 4:] == 0).all() and (out[1, 2:] == 0).all()
    _, alone = block(x[:1, :4], torch.ones(1, 4, dtype=torch.bool))
    assert torch.allclose(out[0, :4], alone[0], atol=1e-6)


def test_unimodal_projection_is_linear_then_layer_norm():
    # Linear = identity (weight I, bias 0), LayerNorm at its initial scale 1 and shift 0: each
    # frame comes out standardised over its features, (x - mean) / sqrt(var + 1e-5), var the
    # population variance. [1, 2, 3, 4]: mean 2.5, var (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25;
    # [2, 2, 2, 6]: mean 3, var (1 + 1 + 1 + 9) / 4 = 3.
    block = UnimodalBlock(4, 4)
    with torch.no_grad():
        block.projection[0].weight.copy_(torch.eye(4)), block.projection[0].bias.zero_()
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 6.0]]])
    projected, _ = block(x, torch.ones(1, 2, dtype=torch.bool))
    expected = [
        [(v - 2.5) / math.sqrt(1.25 + 1e-5) for v in (1, 2, 3, 4)],  # -1.3416 -0.4472 0.4472 1.3416
        [(v - 3.0) / math.sqrt(3.0 + 1e-5) for v in (2, 2, 2, 6)],  # -0.5774 x 3, 1.7320
    ]
    assert torch.allclose(projected[0], torch.tensor(expected), atol=1e-5)


def test_unimodal_block_runs_its_gru_in_fp32_under_autocast():
    torch.manual_seed(0)
    block = UnimodalBlock(5, 4)
    x, mask = torch.randn(2, 30, 5), torch.arange(30) < torch.tensor([[30], [17]])
    _, full = block(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected, out = block(x, mask)
    assert projected.dtype == torch.bfloat16 and out.dtype == torch.float32
    # only the projection's bf16 rounding reaches the GRU (its input), nothing of its own
    assert torch.allclose(out, full, atol=2e-2) and not torch.equal(out, full)


def test_cross_modal_block_ignores_padded_keys():
    torch.manual_seed(0)
    block = CrossModalBlock(4, num_heads=1, dropout=0.5).eval()
    s, t = torch.randn(1, 3, 4), torch.randn(1, 2, 4)
    ones = lambda n: torch.ones(1, n, dtype=torch.bool)  # noqa: E731
    s_out, t_out = block(s, ones(3), t, ones(2))
    t_pad = torch.cat([t, torch.randn(1, 5, 4) * 100], dim=1)
    t_mask = torch.tensor([[True, True] + [False] * 5])
    s_out2, t_out2 = block(s, ones(3), t_pad, t_mask)
    assert torch.allclose(s_out, s_out2, atol=1e-5)
    assert torch.allclose(t_out, t_out2[:, :2], atol=1e-5)


def test_cross_modal_attention_applies_its_dropout_in_training():
    """Dropout 1 drops every attention weight in training: each attention output is then its
    output projection's bias alone, added to the queries (residual). In evaluation nothing is
    dropped (the wiring test below)."""
    torch.manual_seed(0)
    block = CrossModalBlock(2, num_heads=1, dropout=1.0).train()
    bias = torch.tensor([0.25, -0.5])
    with torch.no_grad():
        block.speech_to_text.out_proj.bias.copy_(bias), block.text_to_speech.out_proj.bias.copy_(bias)
    s, t = torch.randn(1, 3, 2), torch.randn(1, 2, 2)
    s_out, t_out = block(s, torch.ones(1, 3, dtype=torch.bool), t, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(s_out, s + bias, atol=1e-6) and torch.allclose(t_out, t + bias, atol=1e-6)


def test_classifier_is_layer_norm_fc1_relu_dropout_out():
    # x = [1, 2, 3]: LayerNorm -> (x - 2) / sqrt(2/3 + 1e-5) = [-1.2247, 0, 1.2247];
    # fc1 rows [1 0 0], [0 0 1] -> fused [-1.2247, 1.2247] (the fusion leg's input, before ReLU);
    # ReLU -> [0, 1.2247]; out rows [1 1], [2 -1], bias [0.5, -0.5] -> [1.7247, -1.7247].
    # In training, dropout 1 zeroes the ReLU output: the logits are the bias; fused is unchanged.
    block = ClassifierBlock(3, 2, bottleneck_dim=2, dropout=1.0)
    with torch.no_grad():
        block.fc1.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])), block.fc1.bias.zero_()
        block.out.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, -1.0]]))
        block.out.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    a = 1 / math.sqrt(2 / 3 + 1e-5)
    logits, fused = block.eval()(x)
    assert torch.allclose(fused, torch.tensor([[-a, a]]), atol=1e-5)
    assert torch.allclose(logits, torch.tensor([[0.5 + a, -0.5 - a]]), atol=1e-5)
    logits, fused = block.train()(x)
    assert torch.allclose(fused, torch.tensor([[-a, a]]), atol=1e-5)
    assert torch.equal(logits, torch.tensor([[0.5, -0.5]]))


def test_non_finite_rows_are_the_rows_holding_any_nan_or_infinity():
    # argmax of a row with one NaN is that NaN's class: a row is bad as soon as one score is
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[0.0, 1.0], [nan, 2.0], [3.0, -inf], [inf, -inf], [nan, nan], [-1e30, 1e30]])
    assert non_finite_rows(logits) == [1, 2, 3, 4]
    assert non_finite_rows(torch.zeros(3, 4)) == []


@pytest.mark.parametrize("modality", ["bimodal", "speech", "text"])
def test_prediction_does_not_depend_on_batch(make_crab, modality):
    model = make_crab(modality=modality).eval()
    torch.manual_seed(1)
    short, long_ = torch.randn(8000) * 0.1, torch.randn(24000) * 0.1
    texts = ["I am fine.", "This is a much longer transcript that pads the short one a lot."]
    with torch.no_grad():
        alone, taps_alone = model(short.unsqueeze(0), torch.tensor([1.0]), texts[:1])
        batch = torch.stack([torch.cat([short, torch.zeros(16000)]), long_])
        batched, taps_batched = model(batch, torch.tensor([8000 / 24000, 1.0]), texts)
    assert torch.allclose(alone[0], batched[0], atol=1e-5), (alone[0], batched[0])
    for name in taps_alone:
        assert torch.allclose(taps_alone[name][0], taps_batched[name][0], atol=1e-5), name


def test_unmasked_model_gives_its_gru_host_lengths(make_crab, monkeypatch):
    """``padding_masks: false`` (the authors' code) hands the GRU masks of full lengths
    that keep them on the host (``crab.masks``): counting a CUDA mask made the host wait
    for the device in every forward pass."""
    import crab.modules

    counted = []
    real = crab.modules.host_lengths
    monkeypatch.setattr(
        crab.modules,
        "host_lengths",
        lambda mask: counted.append(getattr(mask, "host_lengths", None) is None) or real(mask),
    )
    model = make_crab(padding_masks=False).eval()
    with torch.no_grad():
        model(torch.randn(2, 16000) * 0.1, torch.tensor([1.0, 0.5]), ["I am fine.", "A longer one here."])
    assert counted == [False, False]  # speech and text: neither counted on the device


def test_forward_wires_the_blocks_as_the_paper_describes(make_crab):
    """Each representation recomputed from the blocks in the paper's order, on a padded batch:
    projection (Linear + LayerNorm) -> bi-GRU; speech queries attend to text and text to
    speech, each output added to its queries (no FFN); pooling softmax(r . m / sqrt(D)) over
    real frames; LayerNorm -> fc1 (the fusion leg's input, before ReLU) -> ReLU -> out."""
    model = make_crab(seed=4).eval()
    wavs, lens = torch.randn(2, 16000) * 0.1, torch.tensor([0.6, 1.0])
    texts = ["so happy", "this one is a good deal longer"]
    with torch.no_grad():
        logits, taps = model(wavs, lens, texts)
        seqs, masks = {}, {}
        for branch, inputs in (("speech", (wavs, lens)), ("text", (texts,))):
            encoder, block = model.encoders[branch], model.unimodal[branch]
            states, mask = encoder.states(*inputs)
            assert not mask.all()  # one row padded
            hidden = encoder.select(states, mask)
            projected = block.projection[1](block.projection[0](hidden))
            n = int(mask[0].sum())
            seq = block.gru(projected[:1, :n])[0]  # the first row alone, without its padding
            torch.testing.assert_close(block(hidden, mask)[1][:1, :n], seq, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(taps[f"{branch}_unimodal"][:1], seq.mean(dim=1), atol=1e-5, rtol=1e-4)
            seqs[branch], masks[branch] = block(hidden, mask)[1], mask
        s, t = seqs["speech"], seqs["text"]
        cross = model.cross_modal
        attended = {
            "speech": s + cross.speech_to_text(s, t, t, key_padding_mask=~masks["text"])[0],
            "text": t + cross.text_to_speech(t, s, s, key_padding_mask=~masks["speech"])[0],
        }
        pooled = []
        for branch in ("speech", "text"):
            x, mask, query = attended[branch], masks[branch], model.pooling[branch].query
            scores = (x @ query / math.sqrt(x.shape[-1])).masked_fill(~mask, float("-inf"))
            pooled.append((torch.softmax(scores, dim=1).unsqueeze(-1) * x).sum(dim=1))
            torch.testing.assert_close(taps[f"{branch}_pooled"], pooled[-1], atol=1e-5, rtol=1e-4)
        classifier = model.classifier
        fused = classifier.fc1(classifier.norm(torch.cat(pooled, dim=-1)))
        torch.testing.assert_close(taps["fusion"], fused, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits, classifier.out(torch.relu(fused)), atol=1e-5, rtol=1e-4)


def test_legs_leave_the_inference_model_unchanged(make_crab):
    with_legs = make_crab(seed=3)
    legs = SupervisionLegs(with_legs.tap_dims, LEG_NAMES, output_dim=8)
    without_legs = make_crab(seed=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(with_legs) == count(without_legs)
    assert count(legs) > 0
    assert with_legs.state_dict().keys() == without_legs.state_dict().keys()

    # a training step through the legs, then the trained weights in a model built without legs
    optimizer = torch.optim.AdamW(list(with_legs.parameters()) + list(legs.parameters()), lr=1e-3)
    wavs, lens, texts = torch.randn(2, 16000) * 0.1, torch.tensor([1.0, 0.7]), ["so happy", "so sad"]
    logits, taps = with_legs(wavs, lens, texts)
    outputs = legs(taps)
    assert set(outputs) == set(LEG_NAMES)
    (logits.sum() + sum(o.pow(2).mean() for o in outputs.values())).backward()
    optimizer.step()
    without_legs.load_state_dict(with_legs.state_dict())
    with_legs.eval(), without_legs.eval()
    with torch.no_grad():
        assert torch.equal(with_legs(wavs, lens, texts)[0], without_legs(wavs, lens, texts)[0])


def test_legs_follow_the_modality_and_input_choice(make_crab):
    speech_only = make_crab(modality="speech")
    assert speech_only.text_encoder is None and speech_only.cross_modal is None
    legs = SupervisionLegs(speech_only.tap_dims, LEG_NAMES)
    assert legs.names == ["speech_unimodal", "speech_pooled", "fusion"]
    # reference-code variant: unimodal legs read the projection (h), not the GRU (2h)
    projection = make_crab(unimodal_leg_input="projection")
    assert projection.tap_dims["speech_unimodal"] == 16
    assert make_crab().tap_dims["speech_unimodal"] == 32
    legs = SupervisionLegs(projection.tap_dims, ["fusion", "text_unimodal"])
    assert legs.names == ["fusion", "text_unimodal"]
    assert legs.legs["text_unimodal"][0].out_features == 8  # hidden = input / 2
    with pytest.raises(ValueError, match="unknown leg"):
        SupervisionLegs(projection.tap_dims, ["speech_pooled", "audio"])


def test_legs_take_the_hidden_sizes_asked():
    tap_dims = {"speech_unimodal": 8, "speech_pooled": 6, "fusion": 4}
    hidden = lambda legs: {n: leg[0].out_features for n, leg in legs.legs.items()}  # noqa: E731
    assert hidden(SupervisionLegs(tap_dims, list(tap_dims), 2)) == {
        "speech_unimodal": 4,
        "speech_pooled": 3,
        "fusion": 2,
    }
    assert hidden(SupervisionLegs(tap_dims, list(tap_dims), 2, hidden_dim=5)) == dict.fromkeys(tap_dims, 5)
    # the fusion leg's own width (the authors' 512 -> 512 -> 512) leaves the others alone
    assert hidden(SupervisionLegs(tap_dims, list(tap_dims), 2, fusion_hidden_dim=7)) == {
        "speech_unimodal": 4,
        "speech_pooled": 3,
        "fusion": 7,
    }


def test_legs_draw_their_weights_apart_from_the_run_s_random_stream():
    tap_dims = {"speech_pooled": 6, "fusion": 4}
    torch.manual_seed(42)
    before = torch.get_rng_state()
    all_legs = SupervisionLegs(tap_dims, list(tap_dims), 2)
    # the run's stream (dropout masks, later weights) is where a run without legs (CE only) has it
    assert torch.equal(torch.get_rng_state(), before)
    # a leg's weights depend on the run's seed and its name, not on the other legs built
    fusion = SupervisionLegs(tap_dims, ["fusion"], 2).legs["fusion"].state_dict()
    assert all(torch.equal(v, all_legs.legs["fusion"].state_dict()[k]) for k, v in fusion.items())
    same = SupervisionLegs(tap_dims, ["fusion"], 2, seed=42).legs["fusion"][0].weight
    other = SupervisionLegs(tap_dims, ["fusion"], 2, seed=43).legs["fusion"][0].weight
    assert torch.equal(same, fusion["0.weight"]) and not torch.equal(other, same)
    # legs of the same sizes (the two pooled legs) start from weights of their own
    pooled = SupervisionLegs({"speech_pooled": 6, "text_pooled": 6}, ["speech_pooled", "text_pooled"], 2)
    assert not torch.equal(pooled.legs["speech_pooled"][0].weight, pooled.legs["text_pooled"][0].weight)


def test_a_leg_is_fc_relu_fc_and_passes_gradients_to_its_representation():
    legs = SupervisionLegs({"fusion": 2}, ["fusion"], output_dim=1, hidden_dim=2)
    first, second = legs.legs["fusion"][0], legs.legs["fusion"][-1]
    with torch.no_grad():
        first.weight.copy_(torch.eye(2)), first.bias.zero_()
        second.weight.copy_(torch.tensor([[1.0, 1.0]])), second.bias.fill_(-1.0)
    fused = torch.tensor([[3.0, -2.0], [-3.0, -2.0]], requires_grad=True)
    out = legs({"fusion": fused})["fusion"]
    # hidden relu([3, -2]) = [3, 0] -> 3 - 1 = 2; relu([-3, -2]) = [0, 0] -> -1 (no ReLU after the last FC)
    assert out.tolist() == [[2.0], [-1.0]]
    # the leg's loss reaches the model through its input: d out / d input = [1, 1] * relu'(h)
    out.sum().backward()
    assert fused.grad.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_parameter_groups_split_encoders_from_head(make_crab):
    model = make_crab()
    speech, text, head = (
        model.encoder_parameters("speech"),
        model.encoder_parameters("text"),
        model.head_parameters(),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(speech) + len(text) + len(head) == len(trainable)
    # the CNN feature encoder is frozen by default
    frozen = list(model.speech_encoder.model.feature_extractor.parameters())
    assert all(not p.requires_grad for p in frozen)
    assert make_crab(modality="text").encoder_parameters("speech") == []


def test_unmasked_model_reads_every_padded_frame_as_the_authors_code_does(make_crab):
    """``padding_masks: false``: the GRU runs over each row's padded frames too and the
    unimodal legs average every frame (the authors' code), not the real frames alone."""
    model = make_crab(padding_masks=False).eval()
    wavs, lens = torch.randn(2, 16000) * 0.1, torch.tensor([0.5, 1.0])
    texts = ["so happy", "this one is a good deal longer"]
    with torch.no_grad():
        _, taps = model(wavs, lens, texts)
        for branch, inputs in (("speech", (wavs, lens)), ("text", (texts,))):
            encoder, block = model.encoders[branch], model.unimodal[branch]
            states, mask = encoder.states(*inputs)
            assert not mask.all()  # one row padded
            projected = block.projection(encoder.select(states, mask))
            seq = block.gru(projected)[0]  # every frame of every row, padded ones included
            torch.testing.assert_close(taps[f"{branch}_unimodal"], seq.mean(dim=1), atol=1e-5, rtol=1e-4)


def test_unmasked_model_refuses_cached_states(make_crab):
    """A feature cache holds each utterance's real frames only: a model of ``padding_masks:
    false`` would read the zeros its batch is padded with as encoder outputs."""
    model = make_crab(padding_masks=False, modality="speech").eval()
    states = model.encoder_states(torch.randn(2, 8000) * 0.1, torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="padding_masks: false .* without --feature_cache"):
        model(states=states)
