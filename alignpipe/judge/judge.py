"""The Judge: decides what to ask (orders, dedup, cache), lets a backend ask it, and sums up.

Every finished judgment goes to the cache the moment it arrives, so an interrupted evaluation
loses nothing and its rerun asks only for what is missing. The validity gate (gate.py) runs
here, so it guards every use of a judge: evaluation, OOD and judge-labelled pairs alike.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from alignpipe.judge.aggregate import summarize
from alignpipe.judge.backend import Answer, Backend, JudgeUnavailableError, Request
from alignpipe.judge.cache import VerdictCache, cache_key
from alignpipe.judge.gate import ValidityGate
from alignpipe.judge.ordering import ORDERS, POLICY_FIRST, item_order, policy_wins, shown_texts
from alignpipe.judge.records import Comparison, JudgeResult, Verdict
from alignpipe.judge.usage import UsageLedger


@dataclass(frozen=True)
class _Slot:
    """One verdict to produce: an item shown in `order`."""

    order: str
    request: Request


class _GateFailed(Exception):
    """Raised from on_answer to make the backend stop asking; the Judge reports the gate's error."""


class Judge:
    def __init__(
        self,
        backend: Backend,
        cache_dir: Path,
        *,
        template: str,
        both_orders: bool = False,
        seed: int = 0,
        max_invalid_fraction: float = 0.2,
    ) -> None:
        self.backend = backend
        self.cache = VerdictCache(Path(cache_dir))
        self.template = template
        self.both_orders = both_orders and backend.order_sensitive
        self.seed = seed
        ValidityGate(max_invalid_fraction, 0)  # a bad value fails here, not after paying for verdicts
        self.max_invalid_fraction = max_invalid_fraction
        self.usage = UsageLedger()  # every judgment this judge made, per purpose (alignpipe.judge.usage)

    @property
    def name(self) -> str:
        """The judge as errors name it, e.g. "openai:gpt-4o at https://api.openai.com/v1"."""
        endpoint = getattr(self.backend, "endpoint", None)
        return f"{self.backend.name}:{self.backend.model_id}" + (f" at {endpoint}" if endpoint else "")

    def scores(self, texts: list[str]) -> list[float]:
        """Per-text rewards (backend 'reward' only), e.g. for the mean reward of a policy's samples."""
        scores = getattr(self.backend, "scores", None)
        if scores is None:
            raise TypeError(f"Judge.scores needs judge.backend 'reward', this judge uses '{self.backend.name}'")
        return scores(texts)

    def _orders(self, index: int) -> tuple[str, ...]:
        if not self.backend.order_sensitive:
            return (POLICY_FIRST,)
        if self.both_orders:
            return ORDERS
        return (item_order(self.seed, index),)

    def _plan(self, items: list[Comparison]) -> list[_Slot]:
        slots = []
        for i, item in enumerate(items):
            if not isinstance(item, Comparison):
                raise TypeError(f"Judge.judge: items[{i}] is {type(item).__name__}, expected Comparison")
            for field in ("prompt", "policy", "baseline"):
                if not isinstance(getattr(item, field), str):
                    raise TypeError(f"Judge.judge: items[{i}].{field} must be str")
            for order in self._orders(i):
                first, second = shown_texts(order, item.policy, item.baseline)
                key = cache_key(
                    self.backend.name, self.backend.model_id, self.template, item.prompt, first, second, order
                )
                slots.append(_Slot(order, Request(key, item.prompt, first, second)))
        return slots

    def judge(self, items: list[Comparison], desc: str = "judging", purpose: str = "judging") -> JudgeResult:
        """Judge every item (asking only what the cache lacks) and sum up; what it spent goes to
        self.usage under `purpose` (also what an interrupted call had paid for before it failed).

        Raises JudgeInvalidVerdictsError when more than max_invalid_fraction of the verdicts are
        invalid (as early as that is certain), and JudgeUnavailableError when the backend gives up.
        """
        slots = self._plan(items)
        copies = Counter(s.request.key for s in slots)  # an item repeated in this call: one judgment, many verdicts
        gate = ValidityGate(self.max_invalid_fraction, len(slots))
        cached_keys = {s.request.key: None for s in slots if s.request.key in self.cache}  # in item order
        for key in cached_keys:
            record = self.cache.get(key)
            assert record is not None
            gate.add(record["first_wins"] is not None, record["raw"], copies[key])
        pending = list({s.request.key: s.request for s in slots if s.request.key not in cached_keys}.values())
        fresh: dict[str, Answer] = {}
        spent = [0.0]
        bar = tqdm(total=len(pending), desc=desc, disable=not pending or gate.failed)

        def on_answer(request: Request, answer: Answer) -> None:
            self.cache.put(
                request.key,
                {
                    "first_wins": answer.first_wins,
                    "raw": answer.raw,
                    "input_tokens": answer.input_tokens,
                    "output_tokens": answer.output_tokens,
                    "cost_usd": answer.cost_usd,
                    "backend": self.backend.name,
                    "model": self.backend.model_id,
                    "template": self.template,
                    "time": time.time(),
                },
            )
            fresh[request.key] = answer
            gate.add(answer.first_wins is not None, answer.raw, copies[request.key])
            bar.update(1)
            postfix = {}
            if answer.cost_usd:  # None (unknown price) shows no cost rather than a wrong one
                spent[0] += answer.cost_usd
                postfix["cost"] = f"${spent[0]:.4f}"
            if gate.n_invalid:
                postfix["invalid"] = str(gate.n_invalid)
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            if gate.failed:
                raise _GateFailed

        try:
            if not gate.failed:
                self.backend.answer(pending, on_answer)
        except _GateFailed:
            pass  # reported below, with the counts of everything that did arrive
        except JudgeUnavailableError as e:
            then = "fix the key and rerun" if e.refused else "rerun to resume"
            raise JudgeUnavailableError(
                f"{e}; {len(fresh)} of {len(pending)} new verdicts were saved to {self.cache.path}, {then}", refused=e.refused
            ) from None
        finally:
            bar.close()
            self.usage.record_answers(purpose, fresh.values())  # paid for, even when the call then fails
        if gate.failed:
            raise gate.error(self.name)
        missing = [r.key for r in pending if r.key not in fresh]
        if missing:
            raise RuntimeError(f"judge backend '{self.backend.name}' returned no answer for {len(missing)} request(s)")
        verdicts, paid = [], set()
        for slot in slots:
            # An item repeated within one call is asked once and paid once: later copies are "cached".
            reused = slot.request.key in cached_keys or slot.request.key in paid
            paid.add(slot.request.key)
            verdicts.append(self._verdict(slot, fresh, reused))
        result = summarize(verdicts, len(self._orders(0)) if slots else 1, self.backend.order_sensitive)
        self.usage.record_cached(purpose, result.n_cached)
        return result

    def _verdict(self, slot: _Slot, fresh: dict[str, Answer], reused: bool) -> Verdict:
        key = slot.request.key
        if reused:
            rec = self.cache.get(key)
            assert rec is not None
            return Verdict(
                policy_wins=policy_wins(slot.order, rec["first_wins"]),
                raw=rec["raw"],
                order=slot.order,
                cached=True,
                input_tokens=int(rec.get("input_tokens", 0)),
                output_tokens=int(rec.get("output_tokens", 0)),
                cost_usd=0.0,
            )
        answer = fresh[key]
        return Verdict(
            policy_wins=policy_wins(slot.order, answer.first_wins),
            raw=answer.raw,
            order=slot.order,
            cached=False,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            cost_usd=answer.cost_usd,
        )


def describe(result: JudgeResult) -> str:
    """A one-line summary for logs."""
    rate = "n/a" if result.win_rate is None else f"{result.win_rate:.3f} ± {result.stderr:.3f}"
    parts = [f"win rate {rate}", f"valid {result.n_valid}", f"invalid {result.n_invalid}", f"cached {result.n_cached}"]
    if result.disagreement_rate is not None:
        parts.append(f"order disagreement {result.disagreement_rate:.3f}")
    if result.first_wins_share is not None:
        parts.append(f"first shown wins {result.first_wins_share:.3f}")
    if result.cost_usd is None:
        parts.append("cost unknown (no judge prices set)")
    elif result.cost_usd:
        parts.append(f"cost ${result.cost_usd:.4f}")
    return ", ".join(parts)


__all__ = ["Judge", "describe"]
