"""Which replica a request should go to, as pure functions (no Ray): the router in ``router.py``
calls them, and they are tested on their own.

A replica's KV cache keeps the prompts it served in its slots, so a conversation's next turn is
cheap only on the replica that served the last one (its prompt is the last one's plus a reply and
a question). The key is the conversation's head: the model, the system prompt and the first user
message, which every later turn repeats. Replicas are ranked by rendezvous hashing: each scores
hash(key, replica) and the highest wins, so adding or removing a replica moves only the
conversations it wins or held, and every router (one per proxy and gateway) agrees without talking.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HEAD_CHARS = 4096  # of the head hashed: enough to tell conversations apart, bounded for a hostile body


def affinity_key(body: bytes) -> str | None:
    """The conversation a chat or completion request belongs to; None for anything else (no JSON,
    no messages or prompt): such requests go wherever the load is lowest."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    messages, prompt = data.get("messages"), data.get("prompt")
    if isinstance(messages, list) and messages:
        head = []
        for m in messages[:64]:  # the system prompt(s) and the first question: what every later turn repeats
            if not isinstance(m, dict):
                return None
            head.append(_text(m))
            if m.get("role") not in ("system", "developer"):
                break
        text = "\n".join(head)
    elif isinstance(prompt, str) and prompt:
        text = prompt
    else:
        return None
    model = data.get("model") if isinstance(data.get("model"), str) else ""
    return hashlib.sha256(f"{model}\0{text[:HEAD_CHARS]}".encode()).hexdigest()[:32]


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's text parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return f"{message.get('role')}: {content if isinstance(content, str) else ''}"


def ranked(key: str, replicas: list[str]) -> list[str]:
    """The replicas, the one this conversation should go to first (highest rendezvous score)."""
    return sorted(replicas, key=lambda r: hashlib.sha256(f"{key}\0{r}".encode()).digest(), reverse=True)
