"""Judging with a chat model behind any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp...).

The openai client's own retries are off (max_retries=0) so that one policy (retry.py) decides.
Every transient failure is retried with backoff (Retry-After honoured): 429/408/409/5xx,
timeouts, connections closed or reset mid-response, and a 200 whose body is not JSON or has no
choices (completions.py lists what the client raises or returns for each). A refused key or
another 4xx, or a request that exhausts its retries, stops the run at once: no new request
starts and nothing is retried, the ones in flight finish and are saved, and the run raises
JudgeUnavailableError. The API key is read from OPENAI_API_KEY only and never appears in logs,
errors or repr(). Cost is priced only from configured prices; without them it is None (unknown).
"""
from __future__ import annotations

import asyncio
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Coroutine, Optional, TypeVar

import openai

from alignpipe.judge.backend import Answer, JudgeUnavailableError, OnAnswer, Request
from alignpipe.judge.completions import UNREADABLE_BODY, Completion, read_completion
from alignpipe.judge.parsing import parse_choice
from alignpipe.judge.retry import backoff_delay, is_retryable_status, retry_after_seconds
from alignpipe.judge.templates import format_reminder, get_template, render

T = TypeVar("T")
_LETTER_WINS = {"A": 1.0, "B": 0.0}


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, even when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class _Abandoned(Exception):
    """Another request failed for good: this judgment stops unsent or unretried, and is not saved."""


def api_key_from_env() -> str:
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise RuntimeError("judge backend 'openai' needs the OPENAI_API_KEY environment variable (it is not read from config)")
    return key


class OpenAIBackend:
    name = "openai"
    order_sensitive = True

    def __init__(
        self,
        model: str,
        template: str,
        *,
        base_url: Optional[str] = None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout_s: float = 60.0,
        price_per_1k_input: Optional[float] = None,
        price_per_1k_output: Optional[float] = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        get_template(template)
        if concurrency < 1:
            raise ValueError(f"judge.concurrency must be >= 1, got {concurrency}")
        self.model_id = model
        self.template = template
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._api_key = api_key_from_env()
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.price_per_1k_input = price_per_1k_input
        self.price_per_1k_output = price_per_1k_output
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model_id!r}, base_url={self.base_url!r}, template={self.template!r})"

    @property
    def endpoint(self) -> str:
        return self.base_url or "https://api.openai.com/v1"

    def answer(self, requests: list[Request], on_answer: OnAnswer) -> None:
        if requests:
            run_sync(self._answer_all(requests, on_answer))

    async def _answer_all(self, requests: list[Request], on_answer: OnAnswer) -> None:
        client = openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self.base_url, timeout=self.timeout_s, max_retries=0
        )
        limit = asyncio.Semaphore(self.concurrency)
        stop = asyncio.Event()
        failures: list[BaseException] = []  # in the order they happened: the first is the cause

        async def one(request: Request) -> None:
            try:
                async with limit:
                    result = await self._judge_one(client, request, stop)
                on_answer(request, result)
            except _Abandoned:
                return
            except BaseException as e:
                stop.set()  # send and retry nothing more; requests in flight still finish and are saved
                failures.append(e)
                raise

        try:
            outcomes = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        finally:
            await client.close()
        failure = failures[0] if failures else next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            raise failure

    async def _judge_one(self, client: openai.AsyncOpenAI, request: Request, stop: asyncio.Event) -> Answer:
        """Ask once; if the answer has no verdict line, remind the judge of the format once."""
        messages = [{"role": "user", "content": render(self.template, request.prompt, request.first, request.second)}]
        done = await self._complete(client, messages, stop)
        text, tokens_in, tokens_out = done.text, done.input_tokens, done.output_tokens
        choice = parse_choice(text, self.template)
        if choice is None:
            messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": format_reminder(self.template)},
            ]
            done = await self._complete(client, messages, stop)
            text, tokens_in, tokens_out = done.text, tokens_in + done.input_tokens, tokens_out + done.output_tokens
            choice = parse_choice(text, self.template)
        return Answer(_LETTER_WINS.get(choice or ""), text, tokens_in, tokens_out, self.price(tokens_in, tokens_out))

    def price(self, tokens_in: int, tokens_out: int) -> Optional[float]:
        """Dollars for these tokens at the configured prices; None (unknown) when a price is not set."""
        if self.price_per_1k_input is None or self.price_per_1k_output is None:
            return None
        return tokens_in / 1000.0 * self.price_per_1k_input + tokens_out / 1000.0 * self.price_per_1k_output

    async def _complete(self, client: openai.AsyncOpenAI, messages: list[dict[str, str]], stop: asyncio.Event) -> Completion:
        """One chat completion at temperature 0, retried on transient failures until `stop` is set."""
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if stop.is_set():
                raise _Abandoned
            retry_after = None
            try:
                response = await client.chat.completions.create(
                    model=self.model_id, messages=messages, temperature=0  # type: ignore[arg-type]
                )
            except openai.APIStatusError as e:
                if not is_retryable_status(e.status_code):
                    raise JudgeUnavailableError(self._fatal_message(e), refused=e.status_code in (401, 403)) from None
                retry_after = retry_after_seconds(e.response.headers)
                last_error = f"HTTP {e.status_code}"
            except openai.APITimeoutError:
                last_error = f"no response within {self.timeout_s:g}s"
            except openai.APIConnectionError as e:
                cause = e.__cause__ or e.__context__
                last_error = f"connection error ({type(cause).__name__ if cause else e})"
            except UNREADABLE_BODY as e:
                last_error = f"a 200 whose body is not JSON ({type(e).__name__})"
            else:
                done = read_completion(response)
                if isinstance(done, Completion):
                    return done
                last_error = done
            if attempt < self.max_retries:
                delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, self._rng, retry_after)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    continue
                raise _Abandoned  # another request failed for good while this one waited
        raise JudgeUnavailableError(
            f"judge endpoint {self.endpoint}: gave up after {self.max_retries + 1} attempts (last: {last_error})"
        )

    def _fatal_message(self, e: openai.APIStatusError) -> str:
        if e.status_code in (401, 403):
            # The server's message may echo part of the key: leave it out.
            return f"judge endpoint {self.endpoint} rejected OPENAI_API_KEY (HTTP {e.status_code})"
        detail = " ".join(str(getattr(e, "message", "") or "").split())[:300]
        return f"judge endpoint {self.endpoint}: HTTP {e.status_code} for model '{self.model_id}': {detail}"
