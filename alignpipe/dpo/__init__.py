"""Direct Preference Optimization: the loss, pair scoring, and the training objective."""
from alignpipe.dpo.loss import LOSS_TYPES, preference_loss
from alignpipe.dpo.scoring import pair_logps, tokenized_pair_logps

__all__ = ["LOSS_TYPES", "preference_loss", "pair_logps", "tokenized_pair_logps"]
