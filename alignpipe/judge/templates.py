"""The judge prompts of the DPO paper (Rafailov et al. 2023, appendix C.2), by `JudgeConfig.template`.

The wording is the paper's; the layout (blank lines between parts, label lines on their own)
follows the authors' released evaluation script. `news` is the concise (C) prompt with
"news article" in place of "forum post", which is how the paper judged CNN/DailyMail (OOD).
Only the user message is sent: the paper gives no system prompt.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    question: str  # the opening question
    query_label: str  # "Post" / "Query": the label of the context being summarized or answered
    response_label: str  # "Summary" / "Response"
    instructions: str  # the FIRST/SECOND paragraph
    answer_key: str  # the label of the verdict line: "Preferred" / "More helpful"


_SUMMARY_INSTRUCTIONS = (
    "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
    'SECOND, on a new line, state only "A" or "B" to indicate your choice. '
    "Your response should use the format:"
)
_DIALOGUE_INSTRUCTIONS = (
    "FIRST provide a one-sentence comparison of the two responses and explain which you feel is more helpful. "
    'SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. '
    "Your response should use the format:"
)
_SUMMARIZATION_Q = (
    "Which of the following summaries does a better job of summarizing the most important points "
    "in the given {source}?"
)
_CONCISE_Q = (
    "Which of the following summaries does a better job of summarizing the most important points "
    "in the given {source}, without including unimportant or irrelevant details? "
    "A good summary is both precise and concise."
)

TEMPLATES: dict[str, Template] = {
    "summarization": Template(
        _SUMMARIZATION_Q.format(source="forum post"), "Post", "Summary", _SUMMARY_INSTRUCTIONS, "Preferred"
    ),
    "concise": Template(
        _CONCISE_Q.format(source="forum post"), "Post", "Summary", _SUMMARY_INSTRUCTIONS, "Preferred"
    ),
    "dialogue": Template(
        "For the following query to a chatbot, which response is more helpful?",
        "Query",
        "Response",
        _DIALOGUE_INSTRUCTIONS,
        "More helpful",
    ),
    "news": Template(
        _CONCISE_Q.format(source="news article"), "Post", "Summary", _SUMMARY_INSTRUCTIONS, "Preferred"
    ),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"judge.template: unknown template '{name}' (choose from: {', '.join(TEMPLATES)})")
    return TEMPLATES[name]


def judge_query(template_name: str, prompt: str) -> str:
    """The context the judge sees, cut from a generation prompt the way the paper's script did.

    TL;DR prompts ("SUBREDDIT: ... POST: <post> TL;DR:") show only the post; a dialogue prompt
    drops its trailing "Assistant:" cue; anything else is shown whole.
    """
    text = prompt.strip()
    if template_name in ("summarization", "concise", "news"):
        if "POST:" in text and "TL;DR:" in text and text.index("POST:") < text.rindex("TL;DR:"):
            return text[text.index("POST:") + len("POST:") : text.rindex("TL;DR:")].strip()
        if text.endswith("TL;DR:"):
            return text[: -len("TL;DR:")].strip()
        return text
    if template_name == "dialogue" and text.endswith("Assistant:"):
        return text[: -len("Assistant:")].strip()
    return text


def render(template_name: str, prompt: str, first: str, second: str) -> str:
    """The full judge prompt with `first` shown as A and `second` as B."""
    t = get_template(template_name)
    return (
        f"{t.question}\n\n"
        f"{t.query_label}:\n{judge_query(template_name, prompt)}\n\n"
        f"{t.response_label} A:\n{first.strip()}\n\n"
        f"{t.response_label} B:\n{second.strip()}\n\n"
        f"{t.instructions}\n"
        "Comparison: <one-sentence comparison and explanation>\n"
        f'{t.answer_key}: <"A" or "B">'
    )


def format_reminder(template_name: str) -> str:
    """The follow-up sent once when an answer has no verdict line."""
    key = get_template(template_name).answer_key
    return f'Please answer again in the requested format; the last line must be exactly "{key}: A" or "{key}: B".'
