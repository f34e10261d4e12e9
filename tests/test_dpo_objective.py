"""The DPO objective feeds the loss what its definition needs: IPO's per-token averages from the
batch's own token counts; reward accuracy counts a tie (step 0) as half."""
import pytest
import torch

from alignpipe.batching import collate_pairs
from alignpipe.dpo.objective import DPOObjective, PreferenceItem
from alignpipe.logprobs import SequenceScorer
from alignpipe.tokenization import TokenizedPair
from pipeline_config.schema import DPOConfig


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    return LlamaForCausalLM(config).double().eval()


PAIRS = [TokenizedPair([5, 6, 7], [8, 9, 10, 11], [12]), TokenizedPair([13, 14], [15] * 20, [16, 17, 18])]


def _items(scorer, pairs, offset=0.0):
    with torch.no_grad():
        ref = scorer(collate_pairs(pairs, 0, prefix_sharing=True)) + offset
    return [PreferenceItem(p, float(ref[i]), float(ref[len(pairs) + i])) for i, p in enumerate(pairs)]


def test_ipo_objective_averages_policy_and_reference_per_token(tiny_lm):
    scorer = SequenceScorer(tiny_lm)
    cfg = DPOConfig(loss_type="ipo", beta=0.1)
    objective = DPOObjective(cfg, lambda pairs: collate_pairs(pairs, 0, prefix_sharing=True))
    items = _items(scorer, PAIRS, offset=torch.tensor([0.3, -0.2, -0.5, 0.1], dtype=torch.float64))  # a reference apart from the policy
    batch = objective.collate(items)
    loss, metrics = objective(scorer, batch, items)
    with torch.no_grad():
        logps = scorer(batch.logp)
    nc = torch.tensor([len(p.chosen) for p in PAIRS], dtype=torch.float64)
    nr = torch.tensor([len(p.rejected) for p in PAIRS], dtype=torch.float64)
    ref_c, ref_r = batch.ref_chosen.double(), batch.ref_rejected.double()
    h = (logps[:2] - ref_c) / nc - (logps[2:] - ref_r) / nr
    assert loss.item() == pytest.approx(((h - 1 / (2 * cfg.beta)) ** 2).sum().item(), rel=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx((cfg.beta * (logps[:2] - ref_c) / nc).sum().item(), rel=1e-5)


def test_reward_accuracy_counts_ties_half(tiny_lm):
    """At step 0 the policy is the reference: both rewards are exactly 0, accuracy 0.5 per pair (was 0).
    In fp32, as the pipeline stores its reference log-probs."""
    import copy

    scorer = SequenceScorer(copy.deepcopy(tiny_lm).float())
    objective = DPOObjective(DPOConfig(), lambda pairs: collate_pairs(pairs, 0, prefix_sharing=True))
    items = _items(scorer, PAIRS)
    _, metrics = objective(scorer, objective.collate(items), items)
    assert metrics["rewards/chosen"] == metrics["rewards/rejected"] == 0.0
    assert metrics["rewards/accuracies"] == 0.5 * len(items)
