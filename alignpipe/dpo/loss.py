"""The DPO family of preference losses, as one function over summed sequence log-probs.

With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)):
  sigmoid  -log sigma(beta h)                                (DPO, Rafailov et al. 2023, eq. 7)
  cdpo     -(1-eps) log sigma(beta h) - eps log sigma(-beta h) (conservative DPO, label noise eps)
  ipo      (h - 1/(2 beta))^2                                 (Azar et al. 2023)
  hinge    relu(1 - beta h)                                   (SLiC-style)
Implicit rewards are beta * (log pi - log ref), detached: they are for logging only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "cdpo", "ipo", "hinge")


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, chosen rewards, rejected rewards."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: '{loss_type}' is not one of {', '.join(LOSS_TYPES)}")
    if loss_type in ("ipo", "hinge") and label_smoothing:
        raise ValueError(f"label_smoothing has no meaning for loss_type '{loss_type}'")
    h = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    if loss_type in ("sigmoid", "cdpo"):
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards
