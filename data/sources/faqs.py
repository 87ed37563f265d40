"""Question -> answer pairs from the Perl FAQ (POD) and the Python FAQ (reStructuredText), from Debian.

The Perl FAQ is ``perlfaq1``-``perlfaq9`` and ``perlunifaq`` in ``perl-doc`` (each
``=head2`` is a question); the Python FAQ is the documentation source that Debian's
versioned Python docs package ships (``html/_sources/faq/*.rst.txt``; each section
with text is a question). Both are turned into plain text by small readers of their
markup here. The hard negative is another answer of the same FAQ file. The Perl FAQ is
held out for evaluation, never trained on; the Python FAQ splits by question.
"""

from __future__ import annotations

import html.entities
import re
from collections.abc import Iterator
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import debian_dependencies, debian_package, read_matching_members
from data.sources.pairs import GroupedPair, grouped_examples
from data.sources.split import Split, split_of
from data.sources.text import truncate_words

PERL_LICENSE = "Perl documentation: the same terms as Perl (Artistic License 1.0 or GPL-1.0-or-later)"
PERL_SOURCE = "Perl FAQ (perlfaq1-9, perlunifaq .pod files) from the Debian package perl-doc, via apt-get download"
PYTHON_LICENSE = "Python documentation: PSF License Agreement (Python 3 documentation licence)"
PYTHON_SOURCE = (
    "Python FAQ (html/_sources/faq/*.rst.txt) from the Debian package that python3-doc depends on "
    "(python3.11-doc in bookworm), via apt-get download"
)
_PERL_FAQ = re.compile(r"\./usr/share/perl/[^/]+/pod/(perlfaq[1-9]|perlunifaq)\.pod")
_PYTHON_FAQ = re.compile(r"\./usr/share/doc/python3[^/]*/html/_sources/faq/(\w+)\.rst\.txt")
MIN_ANSWER_WORDS = 5

# --- POD ---------------------------------------------------------------------------------

_POD_CODE = re.compile(r"([A-Z])(<+)")
_POD_ENTITIES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}
_CONTRIBUTED_BY = re.compile(r"^\(contributed by [^)]*\)\s*", re.IGNORECASE)


def pod_inline(text: str) -> str:
    """POD text with its formatting codes resolved: ``C<x>`` -> x, ``L<text|target>`` -> text, ``E<gt>`` -> >.

    Codes nest, and ``C<< ... >>`` (any number of angle brackets, whitespace inside) may
    hold bare ``<`` and ``>``. ``X<>`` index entries and ``Z<>`` vanish.
    """
    rendered, _ = _pod_inline(text, 0, None)
    return rendered


def _pod_inline(text: str, position: int, closing: re.Pattern[str] | None) -> tuple[str, int]:
    """Render from ``position`` until ``closing`` matches (or the end); return the text and where it ended."""
    out: list[str] = []
    while position < len(text):
        if closing is not None and (end := closing.match(text, position)):
            return "".join(out), end.end()
        code = _POD_CODE.match(text, position)
        if code is None:
            out.append(text[position])
            position += 1
            continue
        letter, angles = code.groups()
        if len(angles) == 1:
            inner, position = _pod_inline(text, code.end(), re.compile(">"))
        else:  # C<< x >>: the content sits between whitespace and as many closing brackets
            inner, position = _pod_inline(text, code.end(), re.compile(r"\s+" + ">" * len(angles)))
            inner = inner.strip()
        out.append(_pod_code(letter, inner))
    return "".join(out), position


def _pod_code(letter: str, inner: str) -> str:
    if letter in "XZ":
        return ""
    if letter == "E":
        if inner.isdigit():
            return chr(int(inner))
        return _POD_ENTITIES.get(inner) or html.entities.html5.get(f"{inner};", "")
    if letter == "L":
        text, bar, _ = inner.partition("|")
        return text if bar else inner.replace('"', "").lstrip("/")
    return inner


def pod_questions(pod: str) -> Iterator[tuple[str, str]]:
    """``(question, answer)`` for each ``=head2`` of a POD file: the heading and the plain text up to the next heading.

    ``=item`` labels are kept as text; other commands, ``=begin``/``=end`` and ``=for``
    blocks are dropped; verbatim (indented) paragraphs are kept as they are.
    """
    question: str | None = None
    answer: list[str] = []
    in_block = False
    for paragraph in re.split(r"\n(?:[ \t]*\n)+", pod):
        if in_block:
            in_block = not paragraph.startswith("=end")
            continue
        if paragraph.startswith("=begin"):
            in_block = True
            continue
        command, _, rest = paragraph.partition(" ")
        if paragraph.startswith("=head"):
            if question is not None:
                yield question, " ".join(" ".join(answer).split())
            question = " ".join(pod_inline(rest).split()) if command == "=head2" else None
            answer = []
        elif question is None or paragraph.startswith(("=over", "=back", "=cut", "=pod", "=for", "=encoding")):
            continue
        elif paragraph.startswith("=item"):
            answer.append(pod_inline(rest))
        elif paragraph[:1].isspace():
            answer.append(paragraph)
        else:
            answer.append(pod_inline(paragraph))
    if question is not None:
        yield question, " ".join(" ".join(answer).split())


@cache
def load_perl_faq() -> tuple[tuple[str, str, str], ...]:
    """``(FAQ file, question, answer)`` of the Perl FAQ, file by file in order."""
    members = read_matching_members(debian_package("perl-doc"), _PERL_FAQ)
    return tuple(
        (_PERL_FAQ.fullmatch(name).group(1), question, _CONTRIBUTED_BY.sub("", answer))
        for name, raw in sorted(members.items())
        for question, answer in pod_questions(raw.decode("utf-8"))
    )


def perl_faq_examples(instruction: str) -> list[TrainingExample]:
    """Every Perl FAQ question -> its answer (first 100 words); hard negative: another answer of its file."""
    return grouped_examples(_faq_pairs(load_perl_faq()), instruction, "perl-faq-answer")


# --- reStructuredText --------------------------------------------------------------------

_UNDERLINE = re.compile(r"([=\-^~*#\"+`:.'_])\1{2,}\s*")
_ROLE = re.compile(r":[\w:+.-]+:`([^`]*)`")
_LINK = re.compile(r"`([^`<]*?)\s*(?:<[^>]*>)?`__?")
_INLINE_MARKUP = re.compile(r"``(.+?)``|\*\*([^*]+)\*\*|\*([^*\s](?:[^*]*[^*\s])?)\*")
_EXPLICIT_MARKUP = re.compile(r"^(\s*)\.\.(\s|$)")
_DIRECTIVE = re.compile(r"^\s*\.\. [\w:-]+::")
_DIRECTIVE_OPTION = re.compile(r"^\s+:[\w-]+:(\s|$)")


def _role_text(found: re.Match[str]) -> str:
    content = found.group(1)
    title = re.match(r"(.*?)\s*<[^>]*>$", content)  # :ref:`title <target>`
    if title and title.group(1):
        return title.group(1)
    content = content.lstrip("!")
    return content.lstrip("~").rsplit(".", 1)[-1] if content.startswith("~") else content


def rst_plain(text: str) -> str:
    """reStructuredText body as plain text: roles, links, inline markup and explicit markup lines resolved.

    Lines starting with ``..`` and directive options are dropped; the content indented
    under a directive (``.. code-block::``) is kept, under a comment or target it is
    dropped too. A closing ``::`` becomes ``:``.
    """
    kept: list[str] = []
    comment_indent: int | None = None  # while set, lines indented deeper belong to a comment
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        if comment_indent is not None and (not line.strip() or indent > comment_indent):
            continue
        comment_indent = None
        markup = _EXPLICIT_MARKUP.match(line)
        if markup:
            comment_indent = None if _DIRECTIVE.match(line) else indent
        elif not _DIRECTIVE_OPTION.match(line):
            kept.append(line)
    plain = "\n".join(kept)
    plain = _ROLE.sub(_role_text, plain)
    plain = _LINK.sub(lambda found: found.group(1), plain)
    plain = _INLINE_MARKUP.sub(lambda found: next(group for group in found.groups() if group is not None), plain)
    plain = re.sub(r"(\S)::(\s|$)", r"\1:\2", plain)
    plain = re.sub(r"(^|\s)::(\s|$)", r"\1\2", plain)
    plain = re.sub(r"\\(.)", r"\1", plain)
    return " ".join(plain.split())


def rst_sections(text: str) -> Iterator[tuple[str, str]]:
    """``(title, plain body)`` of each section: an unindented line after a blank one, underlined
    by one punctuation character repeated.

    The body runs to the next title. A title with an overline too is the document's
    title, not a section: its text is skipped.
    """
    lines = text.splitlines()
    titles = [
        index
        for index in range(len(lines) - 1)
        if lines[index].strip()
        and not lines[index][0].isspace()
        and (index == 0 or not lines[index - 1].strip() or _UNDERLINE.fullmatch(lines[index - 1]))
        and _UNDERLINE.fullmatch(lines[index + 1])
    ]
    for number, index in enumerate(titles):
        end = titles[number + 1] if number + 1 < len(titles) else len(lines)
        body = lines[index + 2 : end]
        if end < len(lines) and body and _UNDERLINE.fullmatch(body[-1]):
            body = body[:-1]  # the next title's overline
        if index == 0 or not _UNDERLINE.fullmatch(lines[index - 1]):
            yield " ".join(lines[index].split()), rst_plain("\n".join(body))


@cache
def load_python_faq() -> tuple[tuple[str, str, str], ...]:
    """``(FAQ file, question, answer)`` of the Python FAQ, file by file in order; sections without text are skipped."""
    docs_package = next(name for name in debian_dependencies("python3-doc") if name.endswith("-doc"))
    members = read_matching_members(debian_package(docs_package), _PYTHON_FAQ)
    return tuple(
        (_PYTHON_FAQ.fullmatch(name).group(1), title, body)
        for name, raw in sorted(members.items())
        for title, body in rst_sections(raw.decode("utf-8"))
        if body
    )


def python_faq_examples(split: Split, instruction: str) -> list[TrainingExample]:
    """Python FAQ question -> its answer (first 100 words); split by question, negative from the same file."""
    in_split = [entry for entry in load_python_faq() if split_of("python-faq", entry[1]) == split]
    return grouped_examples(_faq_pairs(in_split), instruction, "python-faq-answer")


def _faq_pairs(entries: tuple[tuple[str, str, str], ...] | list[tuple[str, str, str]]) -> Iterator[GroupedPair]:
    for faq_file, question, answer in entries:
        if len(answer.split()) >= MIN_ANSWER_WORDS:
            yield GroupedPair(truncate_words(question), truncate_words(answer), faq_file)
