"""Labels and texts from package metadata: the ``Topic ::`` family, and summary + cleaned description
(the cleaning rules are in ``pypi_markup.py``)."""
from __future__ import annotations

import html
import re

from pypi_markup import clean_description, clean_inline

PLACEHOLDERS = {"", "unknown", "none", "n/a", "todo", "-"}  # what old packaging tools wrote for "no text"


def normalise_name(name: str) -> str:
    """PEP 503: lower case, runs of -, _ and . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def topic_family(classifiers: list[str]) -> str | None:
    """The second level of the ``Topic ::`` classifiers when they all share one, else None."""
    families = {parts[1].strip() for c in classifiers
                if len(parts := c.split("::")) >= 2 and parts[0].strip() == "Topic"}
    return families.pop() if len(families) == 1 else None


def _meaningful(text: str) -> str:
    text = text.strip()
    return "" if text.lower() in PLACEHOLDERS else text


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit // 2 else cut


def build_text(summary: str, description: str, desc_chars: int) -> str:
    """summary + " " + the first ``desc_chars`` characters of the cleaned description (word boundary).
    A description that opens with the summary does not repeat it."""
    summary = clean_inline(html.unescape(_meaningful(summary)))
    body = clean_description(_meaningful(description))
    if summary and body.lower().startswith(summary.lower()):
        body = body[len(summary):].lstrip(" .:-")
    return " ".join(p for p in (summary, _truncate(body, desc_chars)) if p).strip()
