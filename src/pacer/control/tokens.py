"""A request's token cost, estimated from its body, and the tokens an answer reports.

Pure functions over parsed JSON: what the pacing gate charges against a
tokens-per-minute quota when a request starts, and what it counts for status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

__all__ = ["estimate_tokens", "tokens_used"]

_MAX_DEPTH: Final = 16  # nesting levels of a body that estimate_tokens looks into


def _text_chars(value: object) -> int:
    """Characters of text in a message content / prompt / input value, in any shape
    the chat, completions, responses and Anthropic APIs use (a string, a list of
    strings or parts, parts with ``text`` or nested ``content``). Iterative, and
    deaf below ``_MAX_DEPTH`` levels, so that no body can exhaust the stack."""
    total = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif depth >= _MAX_DEPTH:
            continue
        elif isinstance(item, list):
            stack.extend((sub, depth + 1) for sub in item)
        elif isinstance(item, Mapping):
            stack.extend((item[key], depth + 1) for key in ("content", "text") if key in item)
    return total


def estimate_tokens(body: object, *, default_max_tokens: int = 0) -> int:
    """A request's token cost, estimated from its JSON body.

    ``max_tokens`` (or ``max_completion_tokens`` / ``max_output_tokens``;
    ``default_max_tokens`` when none is given) plus the prompt size: the characters of
    the message contents, ``prompt``, ``input``, ``system`` and ``instructions``,
    divided by 4 and rounded up. At least 1.
    """
    if not isinstance(body, Mapping):
        return max(1, default_max_tokens)
    completion = max(0, default_max_tokens)
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value) and value >= 0:
                completion = math.ceil(value)
            break
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        chars += sum(_text_chars(m.get("content")) for m in messages if isinstance(m, dict))
    for key in ("prompt", "input", "system", "instructions"):
        chars += _text_chars(body.get(key))
    return max(1, completion + math.ceil(chars / 4))


def tokens_used(body: object) -> int | None:
    """The tokens a response body reports as used (OpenAI ``usage.total_tokens``, or
    Anthropic ``input_tokens + output_tokens``); ``None`` when it says nothing."""
    if not isinstance(body, Mapping):
        return None
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
        return total
    parts = [usage.get(k) for k in ("input_tokens", "output_tokens", "prompt_tokens",
                                     "completion_tokens")]
    counts = [p for p in parts if isinstance(p, int) and not isinstance(p, bool) and p >= 0]
    return sum(counts) if counts else None
