"""The DPO family of preference losses, as one function over sequence log-probs.

With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)):
  sigmoid  -log sigma(beta h)                                (DPO, Rafailov et al. 2023, eq. 7)
  cdpo     -(1-eps) log sigma(beta h) - eps log sigma(-beta h) (conservative DPO, label noise eps)
  ipo      (h - 1/(2 beta))^2                                 (Azar et al. 2023, eq. 17)
  hinge    relu(1 - beta h)                                   (SLiC-style)
The log-probs are summed over each completion's tokens, except for IPO, where they are averaged per
token (as TRL does): IPO regresses h onto the fixed target 1/(2 beta), so on sums the same per-token
margin would be below the target for a short pair (pushed up) and above it for a long one (pushed
down). Hence the token counts, which IPO requires.
Implicit rewards are beta * (log pi - log ref) of the log-probs the loss sees, detached: for logging only.
"""
from __future__ import annotations

from typing import Optional

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
    chosen_tokens: Optional[torch.Tensor] = None,
    rejected_tokens: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, chosen rewards, rejected rewards, from summed completion log-probs (and, for
    IPO, the completions' token counts)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: '{loss_type}' is not one of {', '.join(LOSS_TYPES)}")
    if loss_type in ("ipo", "hinge") and label_smoothing:
        raise ValueError(f"label_smoothing has no meaning for loss_type '{loss_type}'")
    if loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("loss_type 'ipo' averages log-probs per token: pass chosen_tokens and rejected_tokens")
        policy_chosen_logps, reference_chosen_logps = policy_chosen_logps / chosen_tokens, reference_chosen_logps / chosen_tokens
        policy_rejected_logps, reference_rejected_logps = policy_rejected_logps / rejected_tokens, reference_rejected_logps / rejected_tokens
    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type in ("sigmoid", "cdpo"):
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = torch.relu(1 - beta * h)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
