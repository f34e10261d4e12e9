"""Chunked selective log-softmax and prefix-shared scoring agree with the naive computations."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from alignpipe.batching import collate_concatenated, collate_prefix_shared
from alignpipe.dpo.scoring import pair_logps
from alignpipe.logprobs import SequenceScorer, naive_selective_log_softmax, selective_log_softmax
from alignpipe.tokenization import tokenize_pairs

RECORDS = [
    {"prompt": "The movie was", "chosen": " great fun, I loved every minute of it!", "rejected": " awful."},
    {"prompt": "A long prompt about a film that I saw yesterday at the", "chosen": " cinema.", "rejected": " old theatre downtown with friends"},
    {"prompt": "Plot:", "chosen": " a heist goes wrong", "rejected": " two friends drift apart over a summer"},
]


class CountLMHeadMatmuls(TorchDispatchMode):
    """Counts matmuls with a [vocab, ...] operand, at the aten level (so backward's count too)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.count = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.matmul, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            self.count += any(isinstance(a, torch.Tensor) and self.vocab in a.shape for a in args)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])  # recompute the softmax in backward / keep it
def test_chunked_matches_naive_values_and_grads(chunk, keep_bytes):
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(5000, 16, requires_grad=True)
    t = torch.randint(0, 5000, (37,))
    n_chunks = -(-37 // chunk)
    g = torch.randn(37)
    with CountLMHeadMatmuls(5000) as counter:
        fast = selective_log_softmax(h, w, t, chunk=chunk, keep_bytes=keep_bytes)
        kept = len(fast.grad_fn.probs)  # the Function's saved state: one softmax block per chunk, or none
        forward = counter.count
        gh_fast, gw_fast = torch.autograd.grad((fast * g).sum(), (h, w))
    assert kept == (n_chunks if keep_bytes else 0)
    # forward: 1 matmul per chunk; backward: grad_h and grad_w, plus the recomputed logits unless kept
    assert (forward, counter.count - forward) == (n_chunks, n_chunks * (2 if keep_bytes else 3))
    slow = naive_selective_log_softmax(h, w, t)
    assert torch.allclose(fast, slow, atol=1e-5)
    gh_slow, gw_slow = torch.autograd.grad((slow * g).sum(), (h, w))
    assert torch.allclose(gh_fast, gh_slow, atol=1e-5) and torch.allclose(gw_fast, gw_slow, atol=1e-5)


def test_softmax_is_kept_only_when_a_backward_can_follow():
    h = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(500, 16)
    t = torch.randint(0, 500, (8,))
    assert len(selective_log_softmax(h, w, t, keep_bytes=1 << 30).grad_fn.probs) == 1
    assert len(selective_log_softmax(h, w, t, keep_bytes=8 * 500 * 4 - 1).grad_fn.probs) == 0  # does not fit
    with CountLMHeadMatmuls(500) as counter, torch.no_grad():
        out = selective_log_softmax(h, w, t, keep_bytes=1 << 30)
    assert out.grad_fn is None and counter.count == 1
    assert torch.allclose(out, naive_selective_log_softmax(h, w, t), atol=1e-5)


@pytest.mark.parametrize("keep_bytes", [0, 1 << 30])
def test_lm_head_runs_in_fp32_under_cpu_autocast(keep_bytes):
    """Under bf16 autocast (as a bf16-autocast backbone hands it bf16 hidden states) the head
    computes in fp32: equal to the fp32 computation on the same bf16 values, not to a bf16 one."""
    torch.manual_seed(0)
    h = torch.randn(37, 64).bfloat16().requires_grad_()
    w = torch.randn(5000, 64, requires_grad=True)
    t = torch.randint(0, 5000, (37,))
    g = torch.randn(37)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = selective_log_softmax(h, w, t, chunk=7, keep_bytes=keep_bytes)
        gh, gw = torch.autograd.grad((fast * g).sum(), (h, w))
    assert fast.dtype == torch.float32 and gh.dtype == torch.bfloat16 and gw.dtype == torch.float32
    h32 = h.detach().float().requires_grad_()
    slow = naive_selective_log_softmax(h32, w, t)
    gh_slow, gw_slow = torch.autograd.grad((slow * g).sum(), (h32, w))
    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-6)
    assert torch.allclose(gw, gw_slow, atol=1e-4) and torch.allclose(gh.float(), gh_slow, rtol=1e-2, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = naive_selective_log_softmax(h, w.bfloat16(), t)  # what plain autocast would compute
    assert (in_bf16 - slow).abs().max() > 10 * (fast - slow).abs().max()


def _naive_sequence_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logits = model(ids).logits.float().log_softmax(-1)[0]
    return sum(logits[len(prompt) - 1 + j, tok] for j, tok in enumerate(completion))


def test_prefix_shared_equals_separate_forwards(tiny_model, smol_tokenizer):
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    scorer = SequenceScorer(tiny_model)
    with torch.no_grad():
        shared = scorer(collate_prefix_shared(pairs, smol_tokenizer.pad_token_id))
        concat = scorer(collate_concatenated(pairs, smol_tokenizer.pad_token_id))
        naive = torch.stack(
            [_naive_sequence_logps(tiny_model, p.prompt, p.chosen) for p in pairs]
            + [_naive_sequence_logps(tiny_model, p.prompt, p.rejected) for p in pairs]
        )
    assert torch.allclose(shared, naive, atol=1e-4)
    assert torch.allclose(concat, naive, atol=1e-4)


def test_prefix_shared_gradients_match(tiny_model, smol_tokenizer):
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    scorer = SequenceScorer(tiny_model)
    grads = []
    for collate in (collate_prefix_shared, collate_concatenated):
        tiny_model.zero_grad()
        scorer(collate(pairs, smol_tokenizer.pad_token_id)).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in tiny_model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-4)


def test_pair_logps_in_input_order(tiny_model, smol_tokenizer):
    kw = dict(max_length=64, max_prompt_length=32, batch_size=2)
    chosen, rejected = pair_logps(tiny_model, smol_tokenizer, RECORDS, **kw)
    assert chosen.shape == rejected.shape == (3,)
    c_rev, r_rev = pair_logps(tiny_model, smol_tokenizer, RECORDS[::-1], **kw)
    assert torch.allclose(chosen, c_rev.flip(0), atol=1e-5) and torch.allclose(rejected, r_rev.flip(0), atol=1e-5)
    off = pair_logps(tiny_model, smol_tokenizer, RECORDS, prefix_sharing="off", **kw)
    assert torch.allclose(chosen, off[0], atol=1e-4)


def test_eager_attention_takes_the_shared_mask(tiny_model_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    pairs, _ = tokenize_pairs(smol_tokenizer, RECORDS, max_length=64, max_prompt_length=32)
    with torch.no_grad():
        shared = SequenceScorer(eager)(collate_prefix_shared(pairs, smol_tokenizer.pad_token_id))
        concat = SequenceScorer(eager)(collate_concatenated(pairs, smol_tokenizer.pad_token_id))
    assert torch.allclose(shared, concat, atol=1e-4)
