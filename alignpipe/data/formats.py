"""Pure text transforms shared by the adapters: HH dialogue splitting, the TL;DR prompt format,
IMDb markup cleaning, word and token prefixes. No I/O here, so every rule is easy to test on its own."""
from __future__ import annotations

import re
from typing import Optional

ASSISTANT_TURN = "\n\nAssistant:"
TLDR_SUFFIX = "TL;DR:"

_BR_RUN = re.compile(r"[ \t]*(?:<br\s*/?>\s*)+", re.IGNORECASE)
_WORD = re.compile(r"\S+")
# Both the OpenAI (blank lines between parts) and the CarperAI (single newlines) layouts.
_TLDR = re.compile(
    r"^\s*SUBREDDIT:[ \t]*(?P<subreddit>[^\n]*)\n+TITLE:[ \t]*(?P<title>[^\n]*)\n+POST:[ \t]*(?P<post>.*?)\s*TL;DR:\s*$",
    re.DOTALL,
)


def clean_imdb_markup(text: str) -> str:
    """IMDb reviews carry `<br /><br />` paragraph breaks: a run of them becomes one newline."""
    return _BR_RUN.sub("\n", text).strip()


def word_prefix(text: str, n_words: int) -> str:
    """The text up to the end of its `n_words`-th whitespace-separated word (original spacing kept)."""
    if n_words < 1:
        raise ValueError(f"n_words must be >= 1, got {n_words}")
    end = 0
    for i, match in enumerate(_WORD.finditer(text)):
        end = match.end()
        if i + 1 == n_words:
            break
    return text[:end]


def token_prefix(text: str, tokenizer, n_tokens: int) -> str:
    """The text of its first `n_tokens` tokens (no special tokens), cut from the text itself at the
    last token's end offset so the prompt is an exact prefix of the review (the paper's IMDb prompts
    are prefixes of 2 to 8 tokens). A text shorter than that is returned whole."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= n_tokens:
        return text
    return text[: offsets[n_tokens - 1][1]]


def split_dialogue(dialogue: str) -> tuple[str, str]:
    """(prompt up to and including the last "\\n\\nAssistant:", the final assistant reply)."""
    cut = dialogue.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise ValueError("has no '\\n\\nAssistant:' turn")
    cut += len(ASSISTANT_TURN)
    return dialogue[:cut], dialogue[cut:]


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(shared prompt, chosen reply, rejected reply) of an HH-RLHF pair of full dialogues.

    Raises ValueError when the two dialogues do not share the prompt or a reply is empty: a DPO pair
    must differ only in the final assistant turn.
    """
    try:
        prompt, chosen_reply = split_dialogue(chosen)
    except ValueError as e:
        raise ValueError(f"field 'chosen' {e}") from None
    try:
        rejected_prompt, rejected_reply = split_dialogue(rejected)
    except ValueError as e:
        raise ValueError(f"field 'rejected' {e}") from None
    if prompt != rejected_prompt:
        raise ValueError("fields 'chosen' and 'rejected' have different prompts before the last assistant turn")
    for name, reply in (("chosen", chosen_reply), ("rejected", rejected_reply)):
        if not reply.strip():
            raise ValueError(f"field '{name}' has an empty final assistant reply")
    return prompt, chosen_reply, rejected_reply


def tldr_prompt(title: str, post: str, subreddit: Optional[str] = None) -> str:
    """The Reddit TL;DR prompt in OpenAI's layout: "SUBREDDIT: r/...\\n\\nTITLE: ...\\n\\nPOST: ...\\n\\nTL;DR:"."""
    parts = []
    if subreddit:
        parts.append(f"SUBREDDIT: {subreddit if subreddit.startswith('r/') else 'r/' + subreddit}")
    parts.append(f"TITLE: {title.strip()}")
    parts.append(f"POST: {post.strip()}")
    parts.append(TLDR_SUFFIX)
    return "\n\n".join(parts)


def normalize_tldr_prompt(prompt: str) -> str:
    """Rewrite a SUBREDDIT/TITLE/POST prompt (either layout) into the OpenAI layout.

    Prompts without a SUBREDDIT line (e.g. built from a title and post only) are kept as they are,
    but must end in "TL;DR:" so the model knows a summary follows.
    """
    match = _TLDR.match(prompt)
    if match:
        return tldr_prompt(match["title"], match["post"], match["subreddit"])
    if not prompt.rstrip().endswith(TLDR_SUFFIX):
        raise ValueError("does not end in 'TL;DR:'")
    return prompt.rstrip()


def tldr_summary(label: str) -> str:
    """A summary as a completion of "TL;DR:": leading spaces stripped, then exactly one added."""
    return " " + label.lstrip()


def final_assistant_content(messages: list[dict[str, str]]) -> str:
    """The content of the last assistant message of a chat (UltraFeedback's chosen/rejected)."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            return message["content"]
    raise ValueError("has no assistant message")
