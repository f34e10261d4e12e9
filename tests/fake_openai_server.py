"""A real OpenAI-compatible HTTP server for judge tests: deterministic verdicts, scripted faults.

It serves POST /v1/chat/completions on 127.0.0.1 (a free port) from a background thread. The
judge's verdict is decided by the request itself: the summary/response containing GOOD wins.
Requests are counted per request key (the sha256 of the first user message, i.e. one per
distinct judgment). Markers in the judged prompt script faults:

    [[once:KIND]]         the first request for this judgment fails with fault KIND (see FAULTS)
    [[429-once]]          same as [[once:429]] (Retry-After: 0)
    [[500-once]]          same as [[once:500]]
    [[slow-once]]         same as [[once:timeout]]
    [[malformed-once]]    first request gets an answer with no verdict line
    [[malformed-always]]  every request gets an answer with no verdict line
    [[always-A]]          the judge prefers whichever text is shown first (position bias)

FAULTS are the ways a real endpoint or proxy fails: an HTTP status (401, 403, 429 with
Retry-After, 500, 502, 503), no answer at all (the connection is held for `slow_s`, longer
than the client's timeout, then closed), the connection closed or reset after the headers and
half the body, and a
200 whose body is truncated JSON (also cut inside a UTF-8 character), an HTML page, or JSON
without `choices` or with empty `choices`.
Subclasses choose faults by overriding `fault_for` (see hostile_openai_server.py).

A model named in `weak_models` never follows the answer format (a judge too weak for the
prompt). `answer_limit=k` makes the server "die" after k answers: later requests are dropped
without a response, as a crashed server would. `delay_s` holds every answer back a little so
concurrent requests overlap (`max_in_flight` records how many did). Usage is reported as word
counts, and only for answers that arrived whole.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

_SHOWN = re.compile(r"(?:Summary|Response) A:\n(.*?)\n\n(?:Summary|Response) B:\n(.*?)\n\nFIRST", re.S)
_ANSWER_KEY = re.compile(r"^(Preferred|More helpful): <", re.M)
_ONCE = re.compile(r"\[\[once:([\w-]+)\]\]")

MALFORMED = "Comparison: Preferred: A is tempting, but both summaries are fine.\nI cannot decide."
STATUS_FAULTS = {"401": 401, "403": 403, "429": 429, "500": 500, "502": 502, "503": 503}
BODY_FAULTS = (
    "timeout", "closed_mid_body", "reset_mid_body", "truncated_json", "truncated_utf8", "html_200", "no_choices", "empty_choices",
)
FAULTS = (*STATUS_FAULTS, *BODY_FAULTS)
_LEGACY_MARKERS = {"[[429-once]]": "429", "[[500-once]]": "500", "[[slow-once]]": "timeout"}


def request_key(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def weak_answer(content: str) -> str:
    """What a small model says to the judge prompt: a chatty opinion with no verdict line."""
    shown = _SHOWN.search(content)
    first = shown.group(1)[:40] if shown else "the first one"
    return (
        f"Both summaries capture the main idea of the post. The first one (\"{first}\") is a bit shorter, "
        "while the second one adds some details that might matter to the reader, so it depends on what you "
        "are looking for. Overall I would say they are both quite good summaries of the post and either "
        "could work well."
    )


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that timed out or was killed: what a real server sees, not a test failure
        super().handle_error(request, client_address)


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        api_key: str = "test-key",
        answer_limit: Optional[int] = None,
        slow_s: float = 1.0,
        delay_s: float = 0.0,
        retry_after: str = "0",
        weak_models: tuple[str, ...] = (),
    ) -> None:
        self.api_key = api_key
        self.answer_limit = answer_limit
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.weak_models = set(weak_models)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.requests_by_key: Counter[str] = Counter()  # every HTTP request, faults included
        self.answers_by_key: Counter[str] = Counter()  # requests whose 200 answer was sent whole
        self.faults: Counter[str] = Counter()  # fault kind -> times injected
        self.request_times: defaultdict[str, list[float]] = defaultdict(list)  # key -> arrival times
        self.fault_log: defaultdict[str, list[Optional[str]]] = defaultdict(list)  # key -> fault per request
        self.n_unauthorized = 0
        self.n_dropped = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.seen: list[dict[str, Any]] = []  # request bodies, for checking model/temperature
        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), self._handler_class())
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

    def fault_for(self, content: str, key: str, nth: int) -> Optional[str]:
        """The fault to inject into the nth (1-based) request for this judgment, or None."""
        if nth != 1:
            return None
        for marker, kind in _LEGACY_MARKERS.items():
            if marker in content:
                return kind
        once = _ONCE.search(content)
        return once.group(1) if once else None

    def decide(self, body: dict[str, Any]) -> tuple[str, Any]:
        """What to do with one request: ("drop"|"fault"|"answer", detail). Counts it."""
        content = body["messages"][0]["content"]
        key = request_key(content)
        with self.lock:
            self.seen.append(body)
            self.requests_by_key[key] += 1
            self.request_times[key].append(time.monotonic())
            nth = self.requests_by_key[key]
            if self.answer_limit is not None and sum(self.answers_by_key.values()) >= self.answer_limit:
                self.n_dropped += 1
                return "drop", None
            fault = self.fault_for(content, key, nth)
            self.fault_log[key].append(fault)
            if fault is not None:
                if fault not in FAULTS:
                    raise ValueError(f"unknown fault '{fault}'")
                self.faults[fault] += 1
                return "fault", fault
            self.answers_by_key[key] += 1
        time.sleep(self.delay_s)
        if body.get("model") in self.weak_models:
            return "answer", weak_answer(content)
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

    @staticmethod
    def completion(body: dict[str, Any], text: str, usage: Optional[dict[str, int]]) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        if usage is not None:
            payload["usage"] = usage
        return payload

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str], length: int) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(length))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] = {}) -> None:
                data = json.dumps(payload).encode()
                try:
                    self._send(status, data, "application/json", headers, len(data))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): exactly what a slow server sees

            def _fault(self, kind: str, body: dict[str, Any]) -> None:
                if kind in STATUS_FAULTS:
                    status = STATUS_FAULTS[kind]
                    headers = {"Retry-After": server.retry_after} if status == 429 else {}
                    return self._send_json(status, {"error": {"message": f"scripted {status}"}}, headers)
                whole = json.dumps(server.completion(body, server.verdict(body["messages"][0]["content"]), None)).encode()
                if kind == "timeout":
                    time.sleep(server.slow_s)  # the client's timeout has fired by now; no answer ever comes
                    self.close_connection = True
                    return
                if kind in ("closed_mid_body", "reset_mid_body"):
                    self.close_connection = True
                    try:
                        self._send(200, whole[: len(whole) // 2], "application/json", {}, len(whole))
                        if kind == "reset_mid_body":  # RST instead of FIN
                            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            self.connection.close()
                        else:
                            self.connection.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if kind == "truncated_json":
                    cut = whole[: len(whole) // 2]
                    return self._send(200, cut, "application/json", {}, len(cut))
                if kind == "truncated_utf8":  # unescaped non-ASCII text, cut between a character's bytes
                    text = json.dumps(server.completion(body, "Comparaison: naïve — résumé", None), ensure_ascii=False).encode()
                    cut = text[: text.index("ï".encode()) + 1]
                    return self._send(200, cut, "application/json; charset=utf-8", {}, len(cut))
                if kind == "html_200":
                    page = b"<html><body><h1>502 Bad Gateway</h1>upstream closed</body></html>"
                    return self._send(200, page, "text/html", {}, len(page))
                payload = json.loads(whole)
                if kind == "no_choices":
                    del payload["choices"]
                else:  # empty_choices
                    payload["choices"] = []
                return self._send_json(200, payload)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    with server.lock:
                        server.n_unauthorized += 1
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
                if action == "fault":
                    return self._fault(detail, body)
                self._send_json(200, server.completion(body, detail, server.bill(body, detail)))

        return Handler
