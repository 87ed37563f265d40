"""Manual pages' NAME lines paired with their DESCRIPTION, from Debian's ``manpages`` and ``manpages-dev``.

The pages are roff source (``usr/share/man/man<section>/<page>.<section>.gz`` inside the
``.deb``s); :func:`roff_sections` turns one into plain text per section with a small
roff reader (requests, font macros, escapes and tables), the same on every machine,
whatever its groff. Alias pages (links and ``.so`` stubs) have no NAME section and are
skipped. The split unit is the page, and the hard negative is the description of another
page of the same manual section (system calls against system calls).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Collection
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import debian_package, read_matching_members
from data.sources.pairs import GroupedPair, grouped_examples
from data.sources.split import Split, split_of
from data.sources.text import truncate_words

PACKAGES = ("manpages", "manpages-dev")
LICENSE = (
    "Linux man-pages project, per page (mostly Linux-man-pages-copyleft, also GPL and BSD variants); "
    "see /usr/share/doc/manpages/copyright"
)
SOURCE = "Debian packages manpages and manpages-dev (usr/share/man/man*/*.gz), via apt-get download"
_PAGE = re.compile(r"^\./usr/share/man/man(\w+)/([^/]+)\.gz$")

# Named special characters (groff_char(7)) that man pages use; others read as nothing.
_SPECIAL_CHARACTERS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "bu": "\u2022", "aq": "'", "dq": '"', "lq": '"',
    "rq": '"', "oq": "'", "cq": "'", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "ti": "~", "ha": "^",
    "rs": "\\", "sl": "/", "ga": "`", "dg": "\u2020", "de": "\u00b0", "mu": "\u00d7", "di": "\u00f7",
    "pl": "+", "eq": "=", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260", "->": "\u2192", "<-": "\u2190",
    "Fo": "\u00ab", "Fc": "\u00bb", "ba": "|", "or": "|", "lB": "[", "rB": "]", "lC": "{", "rC": "}",
}
_ESCAPE = re.compile(
    r"""\\(?:
        (?P<special>\((?P<two>..)|\[(?P<bracket>[^\]]*)\])   # \(xx or \[name]: a special character
      | [fFmMns*](?:\(..|\[[^\]]*\]|[+-]?\d|.)               # font, colour, size, register, string
      | [hvwlLDXZbokN]'[^']*'                                  # motions, widths, drawing, device control
      | (?P<literal>[-e. 0~'`t])                               # characters escaped for their own sake, a tab
      | .                                                      # \& \| \^ \% \c \: and the rest: nothing
    )""",
    re.VERBOSE,
)
_ARGUMENT = re.compile(r'"((?:[^"]|"")*)"?|(\S+)')
_LITERALS = {"-": "-", "e": "\\", ".": ".", " ": " ", "0": " ", "~": " ", "'": "'", "`": "`", "t": " "}
# Font macros: the first set joins its arguments with spaces, the second alternates fonts without them.
_SPACED_FONT_MACROS = {"B", "I", "SM", "SB"}
_ALTERNATING_FONT_MACROS = {"BR", "BI", "IB", "IR", "RB", "RI"}


def _special(name: str) -> str:
    if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
        return chr(int(name[1:], 16))
    return _SPECIAL_CHARACTERS.get(name, "")


def plain_text(roff_text: str) -> str:
    """A roff text line with its escapes resolved (fonts dropped, special characters written out)."""
    without_comment = re.sub(r'\\".*', "", roff_text)

    def resolve(found: re.Match[str]) -> str:
        if found.group("special"):
            return _special(found.group("two") or found.group("bracket"))
        if found.group("literal"):
            return _LITERALS[found.group("literal")]
        return ""

    return _ESCAPE.sub(resolve, without_comment)


def _arguments(text: str) -> list[str]:
    """The arguments of a request: words, or double-quoted strings in which ``""`` is a quote."""
    return [quoted.replace('""', '"') if not bare else bare for quoted, bare in _ARGUMENT.findall(text)]


def roff_sections(source: str, wanted: Collection[str] | None = None) -> dict[str, str]:
    """Section heading (``NAME``, ``DESCRIPTION``, ...) -> the section's plain text, whitespace collapsed.

    Only the ``wanted`` headings when given (reading stops once they are all read).
    Text before the first ``.SH`` is dropped; so are comments, macro definitions,
    conditionals, table formats and requests that only lay out (``.PP``, ``.in``, ...).
    ``.SS`` headings, ``.IP`` tags and table cells stay as text.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    left = set(wanted) if wanted is not None else None
    in_definition = False  # a macro definition or ignored block, up to its ".." line
    in_table_format = False
    for line in source.splitlines():
        if in_definition:
            in_definition = line.strip() != ".."
            continue
        if in_table_format:
            in_table_format = not line.rstrip().endswith(".")  # the format block ends with a period
            continue
        is_request = line.startswith((".", "'"))
        name, _, rest = line[1:].strip().partition(" ") if is_request else ("", "", "")
        if name in ("de", "de1", "ig"):
            in_definition = True
            continue
        if name == "TS":
            in_table_format = True
            continue
        if name == "SH":
            heading = " ".join(_arguments(rest)).upper()
            if left is None:
                current = sections.setdefault(heading, [])
            elif not left:
                break
            else:
                current = sections.setdefault(heading, []) if heading in left else None
                left.discard(heading)
            continue
        if current is None:
            continue
        if not is_request:
            if line.strip() not in ("_", "=", "T{", "T}"):  # table rules and text-block markers
                current.append(plain_text(line.replace("\t", " ").replace("T{", "").replace("T}", "")))
        elif name in _SPACED_FONT_MACROS or name in ("SS", "IP"):
            arguments = _arguments(rest)[:1] if name == "IP" else _arguments(rest)
            current.append(plain_text(" ".join(arguments)))
        elif name in _ALTERNATING_FONT_MACROS:
            current.append(plain_text("".join(_arguments(rest))))
    return {heading: " ".join(" ".join(parts).split()) for heading, parts in sections.items()}


@cache
def load_pages() -> tuple[tuple[str, str, dict[str, str]], ...]:
    """``(page file name, manual section, {NAME, DESCRIPTION})`` of every page with a NAME section, by file name."""
    pages = []
    for package in PACKAGES:
        archive = debian_package(package)
        for name, raw in read_matching_members(archive, _PAGE).items():
            manual_section, page = _PAGE.match(name).groups()
            sections = roff_sections(gzip.decompress(raw).decode("utf-8", errors="replace"), ("NAME", "DESCRIPTION"))
            if sections.get("NAME"):
                pages.append((page, manual_section, sections))
    return tuple(sorted(pages, key=lambda entry: entry[0]))


def name_to_description_examples(split: Split, instruction: str) -> list[TrainingExample]:
    """NAME line (``stat, fstat - get file status``) -> DESCRIPTION (first 100 words); pages without one are skipped."""
    pairs = (
        GroupedPair(truncate_words(sections["NAME"]), truncate_words(sections["DESCRIPTION"]), manual_section)
        for page, manual_section, sections in load_pages()
        if sections.get("DESCRIPTION") and split_of("manpages", page) == split
    )
    return grouped_examples(pairs, instruction, "manpage-name-description")
