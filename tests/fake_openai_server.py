"""A real OpenAI-compatible HTTP server for judge tests: deterministic verdicts, scripted faults.

It serves POST /v1/chat/completions on 127.0.0.1 (a free port) from a background thread. The
judge's verdict is decided by the request itself: the summary/response containing GOOD wins.
Markers in the judged prompt script faults, counted per request key (the sha256 of the first
user message, i.e. one per distinct judgment):

    [[429-once]]          first request answered 429 with Retry-After: 0
    [[500-once]]          first request answered 500
    [[slow-once]]         first request answered only after `slow_s` (longer than the client timeout)
    [[malformed-once]]    first request gets an answer with no verdict line
    [[malformed-always]]  every request gets an answer with no verdict line
    [[always-A]]          the judge prefers whichever text is shown first (position bias)

`answer_limit=k` makes the server "die" after k answers: later requests are dropped without a
response, as a crashed server would. `delay_s` holds every answer back a little so concurrent
requests overlap (`max_in_flight` records how many did). Usage is reported as word counts.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

_SHOWN = re.compile(r"(?:Summary|Response) A:\n(.*?)\n\n(?:Summary|Response) B:\n(.*?)\n\nFIRST", re.S)
_ANSWER_KEY = re.compile(r"^(Preferred|More helpful): <", re.M)

MALFORMED = "Comparison: Preferred: A is tempting, but both summaries are fine.\nI cannot decide."


def request_key(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


class FakeOpenAIServer:
    def __init__(
        self, *, api_key: str = "test-key", answer_limit: Optional[int] = None, slow_s: float = 1.0, delay_s: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.answer_limit = answer_limit
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.requests_by_key: Counter[str] = Counter()  # every HTTP request, faults included
        self.answers_by_key: Counter[str] = Counter()  # requests that got a 200 answer
        self.n_dropped = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.seen: list[dict[str, Any]] = []  # request bodies, for checking model/temperature
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def n_requests(self) -> int:
        return sum(self.requests_by_key.values())

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def decide(self, body: dict[str, Any]) -> tuple[str, Any]:
        """What to do with one request: ("drop"|"status"|"answer", detail). Counts it."""
        content = body["messages"][0]["content"]
        key = request_key(content)
        with self.lock:
            self.seen.append(body)
            self.requests_by_key[key] += 1
            nth = self.requests_by_key[key]
            if self.answer_limit is not None and sum(self.answers_by_key.values()) >= self.answer_limit:
                self.n_dropped += 1
                return "drop", None
            if "[[429-once]]" in content and nth == 1:
                return "status", 429
            if "[[500-once]]" in content and nth == 1:
                return "status", 500
            self.answers_by_key[key] += 1
        if "[[slow-once]]" in content and nth == 1:
            time.sleep(self.slow_s)
        time.sleep(self.delay_s)
        if "[[malformed-always]]" in content or ("[[malformed-once]]" in content and nth == 1):
            return "answer", MALFORMED
        return "answer", self.verdict(content)

    @staticmethod
    def verdict(content: str) -> str:
        shown = _SHOWN.search(content)
        key = _ANSWER_KEY.search(content)
        if shown is None or key is None:
            return "Comparison: I cannot find two texts to compare."
        a, b = shown.groups()
        if "[[always-A]]" in content:
            letter = "A"
        else:
            letter = "B" if ("GOOD" in b and "GOOD" not in a) else "A"
        return f"Comparison: Text {letter} covers the post better.\n{key.group(1)}: {letter}"

    def bill(self, body: dict[str, Any], answer: str) -> dict[str, int]:
        prompt = sum(len(m["content"].split()) for m in body["messages"])
        completion = len(answer.split())
        with self.lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] = {}) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): exactly what a slow server sees

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send_json(401, {"error": {"message": "Incorrect API key provided: sk-te***ey"}})
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    action, detail = server.decide(body)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if action == "drop":
                    self.close_connection = True
                    return
                if action == "status":
                    return self._send_json(detail, {"error": {"message": f"scripted {detail}"}}, {"Retry-After": "0"})
                usage = server.bill(body, detail)
                self._send_json(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", ""),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": detail}, "finish_reason": "stop"}
                        ],
                        "usage": usage,
                    },
                )

        return Handler
