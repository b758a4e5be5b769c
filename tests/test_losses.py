"""MPCL, SupCon and weighted CE against hand-computed values."""

import math

import pytest
import torch

from crab.losses import (
    ContrastiveLoss,
    WeightedCrossEntropy,
    class_weights,
    leg_losses,
    mpcl,
    supcon,
    total_loss,
)


def reference_mpcl(z, y, tau):
    """The spec's formula written as loops over anchors and candidates."""
    z = [[c / math.sqrt(sum(c * c for c in v)) for c in v] for v in z.tolist()]
    y = y.tolist()
    n = len(z)
    total = 0.0
    for i in range(n):
        sims = {j: sum(a * b for a, b in zip(z[i], z[j], strict=True)) / tau for j in range(n) if j != i}
        norm = sum(math.exp(s) for s in sims.values())
        positives = [j for j in sims if y[j] == y[i]]
        for j in positives:
            total -= (1.0 / len(positives)) * math.log(math.exp(sims[j]) / norm)
    return total / n


# Three unit vectors: two equal ones of class 0, an orthogonal one of class 1.
Z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
Y = torch.tensor([0, 0, 1])


def test_mpcl_hand_computed_with_single_member_class():
    # tau = 1: s_12 = 1, s_13 = s_23 = 0. Anchors 1 and 2 each have one positive
    # with q = e / (e + 1); anchor 3 (the only class-1 member) has no positive,
    # contributes 0 but counts in B = 3.
    expected = 2 * math.log(1 + math.exp(-1)) / 3
    assert mpcl(Z, Y, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_mpcl_two_positives_split_the_target():
    # Anchor 0 has two positives (1, 2) and one negative (3); tau = 0.5.
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 0, 1])
    # anchor 0: s = {1: 2, 2: 0, 3: -2}; log-norm = log(e^2 + 1 + e^-2)
    lnorm0 = math.log(math.exp(2) + 1 + math.exp(-2))
    a0 = -0.5 * ((2 - lnorm0) + (0 - lnorm0))
    a1 = a0  # symmetric to anchor 0
    # anchor 2: s = {0: 0, 1: 0, 3: 0}: q = 1/3 for each, two positives
    a2 = -math.log(1 / 3)
    # anchor 3: no positive
    expected = (a0 + a1 + a2 + 0.0) / 4
    assert mpcl(z, y, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_mpcl_matches_loop_reference_on_random_batch():
    torch.manual_seed(0)
    z = torch.randn(9, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 0, 3, 2, 0])
    assert mpcl(z, y, 0.1).item() == pytest.approx(reference_mpcl(z, y, 0.1), rel=1e-5)


def test_mpcl_is_scale_invariant_and_zero_without_positives():
    torch.manual_seed(1)
    z = torch.randn(6, 4)
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    assert mpcl(z, y).item() == pytest.approx(mpcl(5 * z, y).item(), rel=1e-5)
    assert mpcl(z, torch.arange(6)).item() == 0.0
    assert mpcl(z[:1], y[:1]).item() == 0.0


def test_supcon_hand_computed():
    # tau = base tau = 1: anchors 1 and 2 as in MPCL; anchor 3 has no positive
    # and is left out of the mean (B' = 2).
    expected = math.log(1 + math.exp(-1))
    assert supcon(Z, Y, temperature=1.0, base_temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # the tau / base_tau factor of Khosla et al.'s implementation
    scaled = supcon(Z, Y, temperature=1.0, base_temperature=0.5).item()
    assert scaled == pytest.approx(2 * expected, rel=1e-6)


@pytest.mark.parametrize("anchors", ["with_positive", "all"])
def test_supcon_is_zero_with_a_graph_without_positives(anchors):
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for labels in (torch.arange(5), torch.tensor([3])):
        loss = supcon(z[: len(labels)], labels, anchors=anchors)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_supcon_equals_scaled_mpcl_when_every_anchor_has_a_positive():
    torch.manual_seed(2)
    z = torch.randn(8, 3)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    assert supcon(z, y, 0.1, 0.07).item() == pytest.approx((0.1 / 0.07) * mpcl(z, y, 0.1).item(), rel=1e-5)


def test_losses_have_gradients_and_no_nan_with_duplicates():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1])
    for loss in (mpcl(z, y), supcon(z, y)):
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_contrastive_loss_module_selects_kind():
    assert ContrastiveLoss("mpcl", 1.0)(Z, Y).item() == pytest.approx(mpcl(Z, Y, 1.0).item())
    assert ContrastiveLoss("supcon", 1.0, base_temperature=1.0)(Z, Y).item() == pytest.approx(
        supcon(Z, Y, 1.0, 1.0).item()
    )
    with pytest.raises(ValueError, match="ntxent"):
        ContrastiveLoss("ntxent")


def test_contrastive_loss_module_passes_the_supcon_choices():
    # Z, Y at tau = 1: anchors 1 and 2 lose log(1 + 1/e) each; anchor 3 has no positive
    anchor = math.log(1 + math.exp(-1))

    def loss(**choices):
        return ContrastiveLoss("supcon", 1.0, base_temperature=0.5, **choices)(Z, Y).item()

    assert loss() == pytest.approx(2 * anchor, rel=1e-6)  # tau / tau_base = 2, mean over 2 anchors
    assert loss(supcon_scale="none") == pytest.approx(anchor, rel=1e-6)
    assert loss(supcon_anchors="all") == pytest.approx(2 * 2 * anchor / 3, rel=1e-6)  # anchor 3 counts


@pytest.mark.parametrize("choice", [{"anchors": "every"}, {"scale": "paper"}])
def test_unknown_supcon_choices_are_errors(choice):
    with pytest.raises(ValueError, match=next(iter(choice))):
        supcon(Z, Y, **choice)
    with pytest.raises(ValueError, match=f"supcon_{next(iter(choice))}"):  # when built, before a batch
        ContrastiveLoss("supcon", **{f"supcon_{k}": v for k, v in choice.items()})


def test_class_weights_are_n_over_nc():
    assert class_weights([1, 3, 4]).tolist() == pytest.approx([8.0, 8 / 3, 2.0])
    with pytest.raises(ValueError, match="every class"):
        class_weights([3, 0, 2])


@pytest.mark.parametrize("class_weighting", [True, False])
def test_weighted_ce_refuses_counts_of_another_number_of_classes(class_weighting):
    wce = WeightedCrossEntropy(2, class_weighting=class_weighting)
    for counts in ([5], [1, 2, 3]):  # a single count would broadcast over both weights
        with pytest.raises(ValueError, match=f"{len(counts)} class counts for a 2-class loss"):
            wce.set_counts(counts)


def test_weighted_ce_hand_computed_and_constant_free():
    wce = WeightedCrossEntropy(2)
    wce.set_counts([3, 1])  # weights 4/3 and 4
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    targets = torch.tensor([0, 1])
    # nll: sample 0 -> log 2; sample 1 -> -log(1/4) = log 4
    expected = (4 / 3 * math.log(2) + 4 * math.log(4)) / (4 / 3 + 4)
    assert wce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # the reference's N / (C N_c) weights give the same weighted mean
    reference = torch.nn.functional.cross_entropy(logits, targets, weight=wce.weight / 2)
    assert wce(logits, targets).item() == pytest.approx(reference.item(), rel=1e-6)
    assert "weight" in wce.state_dict()


def test_total_loss_is_wce_plus_alpha_mean_of_legs():
    ce = torch.tensor(1.0)
    legs = [torch.tensor(2.0), torch.tensor(4.0)]
    assert total_loss(ce, legs, alpha=2.0).item() == pytest.approx(1.0 + 2.0 * 3.0)
    assert total_loss(ce, [], alpha=2.0).item() == 1.0


def test_class_weighting_off_keeps_plain_cross_entropy():
    plain = WeightedCrossEntropy(2, class_weighting=False)
    plain.set_counts([3, 1])
    logits, targets = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    assert plain.weight.tolist() == [1.0, 1.0]
    assert plain(logits, targets).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, targets).item()
    )


@pytest.mark.parametrize("loss", [mpcl, supcon])
def test_contrastive_similarities_are_fp32_under_bf16_autocast(loss):
    """Under autocast (``--precision bf16``) the similarities and their softmax stay in
    fp32: the loss of bf16 embeddings equals the fp32 loss of the same values (the
    embeddings' own rounding to bf16 is the only difference)."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(12, 32, generator=generator).to(torch.bfloat16).requires_grad_()
    labels = torch.tensor([0, 1, 2, 3] * 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(embeddings, labels, 0.1)
    assert mixed.dtype == torch.float32
    exact = loss(embeddings.detach().float(), labels, 0.1)
    assert mixed.item() == pytest.approx(exact.item(), rel=1e-6)
    mixed.backward()
    assert embeddings.grad.dtype == torch.bfloat16 and torch.isfinite(embeddings.grad.float()).all()


@pytest.mark.parametrize(
    "criterion",
    [
        ContrastiveLoss("mpcl", 0.1),
        ContrastiveLoss("supcon", 0.1),
        ContrastiveLoss("supcon", 0.1, supcon_anchors="all", supcon_scale="none"),
    ],
)
@pytest.mark.parametrize("batch", [6, 1])
def test_the_legs_in_one_batch_equal_each_legs_own_loss_and_gradient(criterion, batch):
    """``leg_losses`` stacks the legs of one size into one computation: per leg, the same
    loss and gradient as the leg alone (label 3 has no positive; a batch of one gives 0)."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])[:batch]
    outputs = {name: torch.randn(batch, 8, requires_grad=True) for name in ("a", "b", "c")}
    together = leg_losses(criterion, outputs, labels)
    assert list(together) == ["a", "b", "c"]
    sum(together.values()).backward()
    for name, out in outputs.items():
        alone = out.detach().requires_grad_()
        loss = criterion(alone, labels)
        loss.backward()
        assert together[name].item() == pytest.approx(loss.item(), rel=1e-6, abs=1e-7)
        torch.testing.assert_close(out.grad, alone.grad)
    assert (batch == 1) == all(v.item() == 0.0 for v in together.values())


def test_legs_of_other_sizes_or_another_criterion_are_computed_one_by_one():
    labels = torch.tensor([0, 1, 0, 1])
    outputs = {"a": torch.randn(4, 8), "b": torch.randn(4, 3)}
    got = leg_losses(ContrastiveLoss("mpcl", 0.1), outputs, labels)
    assert {n: v.item() for n, v in got.items()} == pytest.approx(
        {n: mpcl(out, labels, 0.1).item() for n, out in outputs.items()}
    )
    calls = []
    got = leg_losses(lambda out, y: calls.append(out.shape) or out.sum(), outputs, labels)
    assert calls == [(4, 8), (4, 3)] and list(got) == ["a", "b"]
    assert leg_losses(ContrastiveLoss("mpcl", 0.1), {}, labels) == {}
