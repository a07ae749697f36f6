"""Query and document instruction prompts, in sentence-transformers' ``prompts`` / ``prompt_name`` convention.

A sentence-transformers model carries ``model.prompts`` (saved in ``config_sentence_transformers.json``), a
mapping prompt name → text that ``model.encode(texts, prompt_name=name)`` prepends to every input. hardbatch
uses the names ``"query"`` and ``"document"`` (``"passage"`` and ``"corpus"`` are accepted for documents)
everywhere a text is embedded — the teacher embedding for mining, training (the collator) and evaluation —
so one setting on the model applies consistently. The B3 paper's positive-side prompts ("Represent the
answer: ", ...) are worth +2.7 points in its Table 2.

Prepending is exactly what sentence-transformers does (the prompt tokens are then part of the pooled
sequence, as with ``include_prompt=True``, its default). Cost: O(total text length).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["DOCUMENT_NAMES", "QUERY_NAMES", "model_prompts", "set_model_prompts", "with_prompt"]

QUERY_NAMES = ("query",)
DOCUMENT_NAMES = ("document", "passage", "corpus")


def _prompts_of(model: Any) -> dict[str, str]:
    prompts = getattr(model, "prompts", None)
    if isinstance(prompts, dict):
        return {str(k): str(v) for k, v in prompts.items()}
    if isinstance(model, str | os.PathLike):
        from hardbatch.embed.models import resolve_model_path

        try:
            path = resolve_model_path(model) / "config_sentence_transformers.json"
        except Exception:  # an unknown model name: it has no prompts we can read
            return {}
        if path.is_file():
            saved = json.loads(path.read_text()).get("prompts") or {}
            return {str(k): str(v) for k, v in saved.items()}
    return {}


def model_prompts(
    model: Any, query_prompt: str | None = None, document_prompt: str | None = None
) -> tuple[str, str]:
    """The (query, document) prompt texts: the explicit ones, else the model's ``"query"`` / ``"document"``.

    Args:
        model: a SentenceTransformer, a model directory, ``"default"`` or anything else (no prompts).
        query_prompt: explicit query prompt (``""``: none, even if the model has one).
        document_prompt: explicit document prompt.

    Returns:
        ``(query_prompt, document_prompt)``, ``""`` where there is none.

    Example:
        >>> from types import SimpleNamespace
        >>> model_prompts(SimpleNamespace(prompts={"query": "query: ", "passage": "passage: "}))
        ('query: ', 'passage: ')
    """
    saved = _prompts_of(model)
    query = (
        query_prompt if query_prompt is not None else next((saved[n] for n in QUERY_NAMES if n in saved), "")
    )
    document = (
        document_prompt
        if document_prompt is not None
        else next((saved[n] for n in DOCUMENT_NAMES if n in saved), "")
    )
    return query, document


def set_model_prompts(model: Any, query_prompt: str | None, document_prompt: str | None) -> None:
    """Store explicit prompts on a SentenceTransformer (``model.prompts``), so saving it keeps them."""
    prompts = dict(getattr(model, "prompts", None) or {})
    if query_prompt is not None:
        prompts["query"] = query_prompt
    if document_prompt is not None:
        prompts["document"] = document_prompt
    model.prompts = prompts


def with_prompt(texts: Sequence[Any], prompt: str) -> list[Any]:
    """``prompt + text`` for every text (the texts unchanged without a prompt; images never get one).

    Example:
        >>> with_prompt(["a cat"], "Represent the caption: ")
        ['Represent the caption: a cat']
    """
    if not prompt:
        return list(texts)
    return [prompt + text if isinstance(text, str) else text for text in texts]
