"""preference_loss against hand computation, and its gradient against the paper's form."""
import math

import pytest
import torch

from alignpipe.dpo.loss import preference_loss

PC, PR, RC, RR = -10.0, -12.0, -11.0, -11.5  # h = (PC-RC) - (PR-RR) = 1 - (-0.5) = 1.5
H = 1.5


def _t(*xs):
    return [torch.tensor([x], dtype=torch.float64, requires_grad=True) for x in xs]


def _sig(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize(
    "loss_type, beta, eps, expected",
    [
        ("sigmoid", 0.1, 0.0, -math.log(_sig(0.1 * H))),
        ("cdpo", 0.5, 0.2, -0.8 * math.log(_sig(0.5 * H)) - 0.2 * math.log(_sig(-0.5 * H))),
        ("ipo", 0.1, 0.0, (H - 1 / 0.2) ** 2),
        ("hinge", 0.5, 0.0, max(0.0, 1 - 0.5 * H)),
        ("hinge", 1.0, 0.0, 0.0),
    ],
)
def test_loss_values_by_hand(loss_type, beta, eps, expected):
    one = torch.ones(1, dtype=torch.float64)  # one token each: IPO's per-token average is the sum
    losses, rc, rr = preference_loss(*_t(PC, PR, RC, RR), beta=beta, loss_type=loss_type, label_smoothing=eps, chosen_tokens=one, rejected_tokens=one)
    assert losses.item() == pytest.approx(expected, rel=1e-9)
    assert rc.item() == pytest.approx(beta * (PC - RC)) and rr.item() == pytest.approx(beta * (PR - RR))
    assert not rc.requires_grad and not rr.requires_grad


def test_gradient_is_the_papers_weighting():
    """dL/dlogpi(y_w) = -beta * sigma(r_rejected - r_chosen), dL/dlogpi(y_l) = +beta * sigma(...)."""
    beta = 0.3
    pc, pr, rc, rr = _t(PC, PR, RC, RR)
    losses, r_c, r_r = preference_loss(pc, pr, rc, rr, beta=beta)
    losses.sum().backward()
    weight = torch.sigmoid(r_r - r_c).item()
    assert pc.grad.item() == pytest.approx(-beta * weight, rel=1e-9)
    assert pr.grad.item() == pytest.approx(beta * weight, rel=1e-9)


def test_label_smoothing_zero_equals_plain_dpo():
    a = preference_loss(*_t(PC, PR, RC, RR), loss_type="sigmoid")[0]
    b = preference_loss(*_t(PC, PR, RC, RR), loss_type="cdpo", label_smoothing=0.0)[0]
    assert torch.equal(a, b)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(*_t(PC, PR, RC, RR), loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(*_t(PC, PR, RC, RR), loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="^loss_type 'ipo' averages log-probs per token: pass chosen_tokens and rejected_tokens$"):
        preference_loss(*_t(PC, PR, RC, RR), loss_type="ipo")


def test_batched_shapes():
    n = 5
    args = [torch.randn(n) for _ in range(4)]
    losses, rc, rr = preference_loss(*args)
    assert losses.shape == rc.shape == rr.shape == (n,)


def test_ipo_averages_per_token_as_trl():
    """IPO's h is built from per-token average log-probs: ((pc-rc)/nc - (pr-rr)/nr - 1/(2 beta))^2."""
    beta, nc, nr = 0.1, torch.tensor([4.0], dtype=torch.float64), torch.tensor([7.0], dtype=torch.float64)
    losses, rc, rr = preference_loss(*_t(PC, PR, RC, RR), beta=beta, loss_type="ipo", chosen_tokens=nc, rejected_tokens=nr)
    h = (PC - RC) / 4 - (PR - RR) / 7
    assert losses.item() == pytest.approx((h - 1 / (2 * beta)) ** 2, rel=1e-12)
    assert rc.item() == pytest.approx(beta * (PC - RC) / 4) and rr.item() == pytest.approx(beta * (PR - RR) / 7)


@pytest.mark.parametrize("tokens", [4, 20])
def test_ipo_moves_the_chosen_log_prob_the_same_way_whatever_the_length(tokens):
    """The issue's example: the same per-token margin (0.5 nats, below IPO's target 1/(2 beta) = 5) on
    a 4-token and a 20-token pair. On summed log-probs h was 2 (pushed up: the chosen log-prob rises)
    for the short pair and 10 (pushed down: it falls) for the long one; per token, both are pushed up."""
    beta, margin = 0.1, 0.5
    n = torch.tensor([float(tokens)], dtype=torch.float64)
    ref_c, ref_r = -2.0 * tokens, -2.0 * tokens
    pc, pr, rc, rr = _t(ref_c + margin * tokens / 2, ref_r - margin * tokens / 2, ref_c, ref_r)  # per-token margin 0.5
    losses, _, _ = preference_loss(pc, pr, rc, rr, beta=beta, loss_type="ipo", chosen_tokens=n, rejected_tokens=n)
    losses.sum().backward()
    assert pc.grad.item() < 0 and pr.grad.item() > 0  # gradient descent raises the chosen, lowers the rejected log-prob
    assert pc.grad.item() * tokens == pytest.approx(2 * (margin - 1 / (2 * beta)), rel=1e-12)  # the same per-token pull
