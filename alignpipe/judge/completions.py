"""Reading what one chat-completions call produced, trusting nothing an endpoint sends.

The openai client (v1+, max_retries=0) hands a hostile endpoint's failures back in several
shapes, measured against tests/fake_openai_server.py:

- HTTP 401/403/429/5xx: openai.APIStatusError subclasses (AuthenticationError, RateLimitError...)
- no answer within the timeout: openai.APITimeoutError (a subclass of APIConnectionError)
- connection closed or reset mid-body: openai.APIConnectionError (httpx RemoteProtocolError/ReadError)
- a 200 with truncated JSON: json.JSONDecodeError, uncaught by the client; cut inside a UTF-8
  character: UnicodeDecodeError
- a 200 with a non-JSON content type (an HTML error page): the body returned as a str
- a 200 with JSON lacking `choices` or with empty `choices`: a ChatCompletion whose choices are None / []

`read_completion` turns a returned object into the answer or a reason it is unusable, and
`UNREADABLE_BODY` lists the exceptions that mean "the body was not JSON"; both are transient.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Union

import openai

UNREADABLE_BODY = (json.JSONDecodeError, UnicodeDecodeError, openai.APIResponseValidationError)


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int
    output_tokens: int


def read_completion(response: Any) -> Union[Completion, str]:
    """The answer's text and token counts, or a short description of why there is none."""
    if isinstance(response, str):
        return f"a 200 whose body is not JSON ({response[:60]!r})"
    choices = getattr(response, "choices", None)
    if not choices:
        return "a 200 without choices"
    message = getattr(choices[0], "message", None)
    if message is None:
        return "a 200 whose first choice has no message"
    usage = getattr(response, "usage", None)
    tokens_in = getattr(usage, "prompt_tokens", None) or 0
    tokens_out = getattr(usage, "completion_tokens", None) or 0
    return Completion(getattr(message, "content", None) or "", int(tokens_in), int(tokens_out))
