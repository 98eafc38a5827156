"""Labels and texts from package metadata: the ``Topic ::`` family, and summary + cleaned description."""
from __future__ import annotations

import html
import re

PLACEHOLDERS = {"", "unknown", "none", "n/a", "todo", "-"}  # what old packaging tools wrote for "no text"

_DROP_BLOCKS = [
    re.compile(r"```.*?(```|\Z)", re.S),  # fenced code
    re.compile(r"~~~.*?(~~~|\Z)", re.S),
    re.compile(r"<!--.*?(-->|\Z)", re.S),  # HTML comments
    re.compile(r"<(script|style|pre|code)\b.*?(</\1>|\Z)", re.S | re.I),
]
_DROP_LINES = [
    re.compile(r"\S+\s+::\s+\S"),  # a trove classifier (or any "A :: B" list), wherever it is quoted
    re.compile(r"^\s*\.\.\s+(\|[^|]+\|\s+)?[\w:-]+::"),  # reST directives: image, code-block, badges
    re.compile(r"^\s*:[\w -]+:(\s|$)"),  # reST field lines (:target:, :alt:) under a directive
    re.compile(r"^\s*\[[^\]]+\]:\s*\S+"),  # Markdown reference-link definitions
    re.compile(r"^\s*[=\-~^*#+`'\".:_]{3,}\s*$"),  # reST section underlines, horizontal rules
    re.compile(r"^\s*(>>>|\$ |\.\.\. |In \[\d+\]:)"),  # interactive sessions
]
_URL = re.compile(r"(?:(?:https?|ftp)://|www\.)[^\s<>()\[\]\"']+(?<![.,;:!?])"  # not its final stop
                  r"|\b(?:[a-z0-9-]+\.)+(?:com|org|net|io|dev|ai|app|co|edu|gov|info|me|xyz|cn|de|uk|jp|fr|ru|in)"
                  r"\b(?:/[^\s<>()\[\]\"']*(?<![.,;:!?]))?", re.I)  # and bare domain names
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SUBS = [
    (re.compile(r"`([^`<]+?)\s*<[^>]+>`__?"), r"\1"),  # reST links: keep their text
    (re.compile(r"<((?:https?|ftp)://[^\s<>]+)>"), r"\1"),  # Markdown autolinks: the bare address
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), " "),  # Markdown images (badges)
    (re.compile(r"!\[[^\]]*\]\[[^\]]*\]"), " "),
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # Markdown links: keep their text
    (re.compile(r"\[([^\]]*)\]\[[^\]]*\]"), r"\1"),
    (re.compile(r":[\w:+-]+:`([^`]*)`"), r"\1"),  # reST roles
    (re.compile(r"\|[\w .-]+\|_?"), " "),  # reST substitutions (badges)
    (re.compile(r"<[a-zA-Z/!][^>]*>"), " "),  # HTML tags
    (re.compile(r"^\s{0,3}#{1,6}\s*", re.M), ""),  # Markdown headings
    (re.compile(r"^\s*>\s?", re.M), ""),  # block quotes
    (re.compile(r"^\s*([-*+]|\d+[.)])\s+", re.M), ""),  # list markers
    (re.compile(r"(\*\*|__|\*|`+)"), ""),  # emphasis and inline code marks
    (re.compile(r"\s*\|\s*"), " "),  # table pipes
    (re.compile(r"(?<!\w)_(\S[^_]*?)_(?!\w)"), r"\1"),
]


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


def clean_description(raw: str) -> str:
    """Markdown, reST or HTML prose as plain text: code, badges, directives and classifier lists dropped,
    links reduced to their text, web addresses (bare domain names too) replaced by ``<url>`` and e-mail
    addresses by ``<email>``, whitespace collapsed."""
    text = html.unescape(raw.replace("\r\n", "\n").replace("\r", "\n"))
    for block in _DROP_BLOCKS:
        text = block.sub("\n", text)
    text = "\n".join(line for line in text.split("\n") if not any(p.search(line) for p in _DROP_LINES))
    for pattern, repl in _SUBS[:6]:  # link texts out before addresses become placeholders
        text = pattern.sub(repl, text)
    text = _URL.sub("\x00", _EMAIL.sub("\x01", text))
    for pattern, repl in _SUBS[6:]:
        text = pattern.sub(repl, text)
    return re.sub(r"\s+", " ", text).replace("\x00", "<url>").replace("\x01", "<email>").strip()


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit // 2 else cut


def build_text(summary: str, description: str, desc_chars: int) -> str:
    """summary + " " + the first ``desc_chars`` characters of the cleaned description (word boundary).
    A description that opens with the summary does not repeat it."""
    summary = re.sub(r"\s+", " ", _URL.sub("<url>", _EMAIL.sub("<email>", _meaningful(summary))))
    body = clean_description(_meaningful(description))
    if summary and body.lower().startswith(summary.lower()):
        body = body[len(summary):].lstrip(" .:-")
    return " ".join(p for p in (summary, _truncate(body, desc_chars)) if p).strip()
