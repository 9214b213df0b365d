"""What a request costs against a tokens-per-minute quota."""

from __future__ import annotations

import json
import math
from typing import Any

from pacer.mockapi.settings import DEFAULT_MAX_TOKENS


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
        return total
    return 0


def token_cost(body: bytes) -> int:
    """What a request costs against ``tpm``: ``max_tokens`` (or
    ``max_completion_tokens``; :data:`DEFAULT_MAX_TOKENS` when absent or not an
    integer >= 0) + ceil(characters of all message contents / 4).

    Message contents are the ``content`` of each of ``messages`` (a string, or a
    list of parts whose ``text`` counts) and Anthropic's top-level ``system``.
    A body that is not a JSON object costs :data:`DEFAULT_MAX_TOKENS`.
    """
    try:
        request = json.loads(body) if body else None
    except (ValueError, RecursionError):
        request = None
    if not isinstance(request, dict):
        return DEFAULT_MAX_TOKENS
    max_tokens = request.get("max_tokens", request.get("max_completion_tokens"))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = DEFAULT_MAX_TOKENS
    chars = _content_chars(request.get("system"))
    messages = request.get("messages")
    if isinstance(messages, list):
        chars += sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    return max_tokens + math.ceil(chars / 4)
