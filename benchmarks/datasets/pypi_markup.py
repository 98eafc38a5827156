"""Markdown, reStructuredText and HTML descriptions as plain prose, with addresses as placeholders.

Two passes: ``_prose_lines`` works line by line (code, reST explicit markup and literal blocks, rules and
table borders go); ``clean_inline`` works within the text (links keep their text, images, roles, tags and
emphasis marks go, web addresses become ``<url>`` and e-mail addresses ``<email>``)."""
from __future__ import annotations

import html
import re

_DROP_BLOCKS = [
    re.compile(r"```.*?(```|\Z)", re.S),  # fenced code
    re.compile(r"~~~.*?(~~~|\Z)", re.S),
    re.compile(r"<!--.*?(-->|\Z)", re.S),  # HTML comments
    re.compile(r"<(script|style|pre|code)\b.*?(</\1>|\Z)", re.S | re.I),
]
_DROP_LINES = [
    re.compile(r"\S\s+::\s+\S"),  # a trove classifier (or any "A :: B" list), wherever it is quoted
    re.compile(r"^\s*:[\w -]+:(\s|$)"),  # reST field lines (:target:, :alt:) left without their directive
    re.compile(r"^\s*\[[^\]]+\]:\s*\S+"),  # Markdown reference-link definitions
    re.compile(r"^(?=.*[=\-~^*#+`'\".:_]{3})[\s|+=\-~^*#`'\".:_]+$"),  # underlines, rules, table borders
    re.compile(r"^\s*(>>>|\$ |\.\.\. |In \[\d+\]:)"),  # interactive sessions
]
# ".. name:: argument", ".. |sub| image::", ".. _target: url", ".. [1] note", ".. comment" or a bare ".."
_EXPLICIT = re.compile(r"^\s*\.\.(?:\s+(?:\|[^|]+\|\s+)?(?:([\w:.+-]+)::(.*)|.*)|\s*)$")
# directives whose body is prose, kept with their argument; every other one goes with its indented body
_PROSE_DIRECTIVES = {"note", "warning", "tip", "important", "hint", "caution", "attention", "danger", "error",
                     "admonition", "seealso", "topic", "sidebar", "rubric", "container", "only", "epigraph",
                     "highlights", "pull-quote", "deprecated", "versionadded", "versionchanged"}

_MAIL_HOSTS = {"gmail", "googlemail", "yahoo", "hotmail", "outlook", "live", "protonmail", "proton", "icloud",
               "gmx", "web", "qq", "163", "126", "yandex", "aol", "fastmail", "posteo", "mailbox", "zoho"}
_MAIL_TLDS = {"com", "net", "org", "de", "fr", "ru", "cn", "uk", "jp", "me", "ch", "it", "br", "ca"}
_PRONOUNS = {"me", "us", "him", "her", "them", "it", "you", "one"}
_AT_BR, _DOT_BR = r"\s*[\[({<]\s*at\s*[\])}>]\s*", r"\s*[\[({<]\s*dot\s*[\])}>]\s*"
_AT_WORD, _DOT_WORD = r"\s+[_*]{0,2}at[_*]{0,2}\s+", r"\s+[_*]{0,2}dot[_*]{0,2}\s+"  # at, AT, __AT__
_DOT = rf"(?:{_DOT_BR}|{_DOT_WORD}|\.)"
_EMAIL = re.compile(r"<\s*(?:mailto:\s*)?[\w.+-]+@[\w-]+(?:\.[\w-]+)+\s*>|(?:mailto:\s*)?(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SPELLED_EMAIL = re.compile(  # "name (at) host [dot] org", "name AT host dot org", "name at host.org"
    rf"<?(?<![\w.+-])(?P<local>[a-z0-9][\w.+-]*(?:(?:{_DOT_BR}|{_DOT_WORD})[a-z0-9][\w.+-]*)*)(?P<at>{_AT_BR}|{_AT_WORD}|@)"
    rf"(?P<domain>[a-z0-9][\w-]*(?:{_DOT}[a-z0-9][\w-]*)*{_DOT}[a-z]{{2,}})\b>?", re.I)
_URL = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>()\[\]\"']+(?<![.,;:!?])"  # not its final stop
                  r"|\b(?:[a-z0-9-]+\.)+(?:com|org|net|io|dev|ai|app|co|edu|gov|info|me|xyz|cn|de|uk|jp|fr|ru|in)"
                  r"\b(?:/[^\s<>()\[\]\"']*(?<![.,;:!?]))?", re.I)  # and bare domain names
_TEXT = r"((?:[^\[\]]|\[(?:[^\[\]]|\[[^\[\]]*\])*\])*)"  # a link's text, two levels of brackets inside
_LINKS = [  # applied before addresses become placeholders, so that a link's text survives its target
    (re.compile(r"\\([\\`*_{}\[\]()#+\-.!|~=<>:])"), r"\1"),  # Markdown backslash escapes: \* reads *
    (re.compile(r"`([^`<]+?)\s*<[^>]+>`__?"), r"\1"),  # reST links
    (re.compile(r"<((?:[a-z][a-z0-9+.-]*://)[^\s<>]+)>", re.I), r"\1"),  # Markdown autolinks: the bare address
    (re.compile(r"!\[" + _TEXT + r"\](?:\((?:[^()]|\([^()]*\))*\)|\[[^\]]*\])?"), " "),  # Markdown images (badges)
    (re.compile(r"\[" + _TEXT + r"\]\((?:[^()]|\([^()]*\))*\)"), r"\1"),  # Markdown links: keep their text
    (re.compile(r"\[" + _TEXT + r"\]\[[^\]]*\]"), r"\1"),
]
_MARKS = [  # applied after
    (re.compile(r":[\w:+.-]+:`~?([^`<]*?)\s*(?:<[^>]*>)?`"), r"\1"),  # reST roles: :func:`~a.b`, :ref:`T <t>`
    (re.compile(r"`([^`]+)`__?"), r"\1"),  # reST references `text`_
    (re.compile(r"(?<![\w`])([^\W_][\w.-]*?[^\W_])__?(?!\w)"), r"\1"),  # and name_
    (re.compile(r"(?<![\w(])\|(?!\s)[\w .-]+(?<!\s)\|_{0,2}(?![\w)])"), " "),  # reST substitutions (badges)
    (re.compile(r"<[a-zA-Z/!][^>]*>"), " "),  # HTML tags
    (re.compile(r"(?<=\])\((?:[^()\s]|\([^()\s]*\))*\)"), ""),  # link targets left by unbalanced brackets
    (re.compile(r"^\s{0,3}#{1,6}\s*", re.M), ""),  # Markdown headings
    (re.compile(r"^\s*>\s?", re.M), ""),  # block quotes
    (re.compile(r"^\s*([-*+]|\d+[.)])\s+", re.M), ""),  # list markers
    (re.compile(r"(\*\*|__|\*|`+)"), ""),  # emphasis and inline code marks
    (re.compile(r"\s*\|\s*"), " "),  # table pipes
    (re.compile(r"(?<!\w)_(\S[^_]*?)_(?!\w)"), r"\1"),
    (re.compile(r"(?<=\S)::(?=\s|$)"), ":"),  # reST literal markers: "Example::" reads "Example:"
    (re.compile(r"(?<!\S)::(?!\S)"), " "),  # and "Example ::" reads "Example"
    (re.compile(r"(?<!\S)[=\-~^*#_+]{3,}(?!\S)"), " "),  # rules and underlines within a line
]


def _drop_indented(lines: list[str], start: int, indent: int) -> int:
    """The index after the blank or deeper-indented lines from ``start``: a block's body."""
    end = start
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    return end


def _prose_lines(lines: list[str]) -> list[str]:
    """reST explicit markup (directives, comments, targets, substitution definitions) goes with its indented
    body, save an admonition's words; a paragraph ending in ``::`` loses the literal (code) block after it."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        explicit = _EXPLICIT.match(line)
        if explicit:
            name, argument = explicit.group(1), explicit.group(2)
            if name and name.lower() in _PROSE_DIRECTIVES:
                out.append(argument)
                i += 1
            else:
                i = _drop_indented(lines, i + 1, indent)
            continue
        if any(p.search(line) for p in _DROP_LINES):
            i += 1
            continue
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2]
            out.append(head + ":" if head.strip() and not head[-1].isspace() else head)  # "Example ::" -> "Example"
            i = _drop_indented(lines, i + 1, indent)
            continue
        out.append(line)
        i += 1
    return out


def _spelled_email(m: re.Match) -> str:
    """``\\x01`` (the e-mail placeholder) when the match is an address, else the text as it was. An address:
    "at" in brackets or capitals, "dot" in brackets or spelled out, or "name at host.org" where the name
    looks like a mailbox (two letters, then a dot, digit, underscore or plus; not "e.g."), the host is a mail provider, the
    whole stands in <>, () or backquotes, follows the word e-mail, or repeats one of the three words before
    it ("Ann Lee lee at host.org")."""
    local, at, domain = m.group("local"), m.group("at"), m.group("domain")
    if re.search(_DOT_BR + "|" + _DOT_WORD, local + " " + domain, re.I) or at.strip(" _*") == "AT" \
            or at.strip()[:1] in "[({<@":
        return "\x01"
    before = m.string[:m.start()].rsplit("\n", 1)[-1]
    after = m.string[m.end():m.end() + 1]
    boxed = (before.endswith(("(", "<", "`")) and after in (")", ">", "`")) or m.group(0)[::len(m.group(0)) - 1] == "<>"
    host, tld = domain.lower().split(".")[0], domain.lower().rsplit(".", 1)[-1]
    looks = local.lower() not in _PRONOUNS and (
        re.fullmatch(r"[a-z]{2,}[._+\d][\w.+-]*(?<!\.)", local, re.I) or (host in _MAIL_HOSTS and tld in _MAIL_TLDS) or boxed
        or re.search(r"\be-?mail\b\W*(?:\w+\W+)?$", before, re.I)
        or local.lower() in before.lower().split()[-3:])
    return "\x01" if looks else m.group(0)


def clean_inline(text: str) -> str:
    """Links reduced to their text, addresses to placeholders, inline markup removed, whitespace collapsed."""
    for pattern, repl in _LINKS:
        text = pattern.sub(repl, text)
    text = _SPELLED_EMAIL.sub(_spelled_email, _EMAIL.sub("\x01", text))
    text = _URL.sub("\x00", re.sub(r"<\s*\x01\s*>", "\x01", text))
    for pattern, repl in _MARKS:
        text = pattern.sub(repl, text)
    return re.sub(r"\s+", " ", text).replace("\x00", "<url>").replace("\x01", "<email>").strip()


def clean_description(text: str) -> str:
    """Markdown, reST or HTML prose as one line of plain text, HTML entities decoded."""
    text = html.unescape(text).replace("\r\n", "\n").replace("\r", "\n")
    for block in _DROP_BLOCKS:
        text = block.sub("\n", text)
    return clean_inline("\n".join(_prose_lines(text.split("\n"))))
