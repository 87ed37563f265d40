"""Debian package summaries paired with their long descriptions, from this project's apt index.

The apt index (:func:`data.sources.archives.debian_lists`) holds each package's section
and source package (``*_Packages``) and its English summary and long description
(``*_Translation-en``). Development, documentation and debug packages repeat their
library's description and are left out, as are transitional and dummy packages; of
packages whose descriptions open with the same paragraph (siblings of one source, such as
``0ad-data`` and ``0ad-data-common``) only the first by name is kept. The split unit is
the source package, and the hard negative is a description from the same section of
another source package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import debian_lists
from data.sources.pairs import GroupedPair, grouped_examples
from data.sources.split import Split, split_of
from data.sources.text import normalized, truncate_words

LICENSE = "Debian package metadata: each description is its package maintainers' (distributed in the Debian archive)"
SOURCE = "Debian apt index of the system's apt sources (*_Packages, *_Translation-en), fetched by apt-get update"
_SKIPPED_NAME = re.compile(r"-(dev|doc|dbg|dbgsym)$")
_PLACEHOLDER_SUMMARY = re.compile(r"\b(transitional|dummy)\b", re.IGNORECASE)
MIN_DESCRIPTION_WORDS = 5


@dataclass(frozen=True)
class PackageDescription:
    """One binary package's description, with the section and source package it belongs to."""

    package: str
    source: str
    section: str
    summary: str
    paragraphs: tuple[str, ...]  # of the long description, whitespace collapsed


# The fields read, one line each (Packages), and a translation's name and long description.
_PACKAGE_FIELD = re.compile(r"^(Package|Source|Section): *(.*)$", re.MULTILINE)
_TRANSLATION = re.compile(
    r"^Package: *(\S+)\n(?:(?!Description-en:)\S+:.*\n)*Description-en: *(.*(?:\n[ \t].*)*)", re.MULTILINE
)


def _long_description_paragraphs(lines: list[str]) -> tuple[str, ...]:
    # Debian policy 5.6.13: each line starts with a space, and " ." is an empty line.
    paragraphs, current = [], []
    for line in lines:
        if line.strip() == ".":
            paragraphs.append(" ".join(current))
            current = []
        else:
            current.extend(line.split())
    paragraphs.append(" ".join(current))
    return tuple(paragraph for paragraph in paragraphs if paragraph)


def parse_descriptions(packages: str, translations: str) -> list[PackageDescription]:
    """Descriptions from the text of ``*_Packages`` and ``*_Translation-en`` files, in package-name order.

    A package listed twice (several suites) keeps its first entry. Packages missing from
    ``packages``, filtered ones (see the module docstring), ones with a long description
    under :data:`MIN_DESCRIPTION_WORDS` words and ones whose first paragraph repeats an
    earlier package's are left out.
    """
    fields_of_package: dict[str, dict[str, str]] = {}
    fields: dict[str, str] = {}
    for found in _PACKAGE_FIELD.finditer(packages):  # "Package:" opens each paragraph
        name, value = found.groups()
        if name == "Package":  # a package listed again fills a throwaway dict: its first entry wins
            fields = {} if value in fields_of_package else fields_of_package.setdefault(value, {})
        fields[name] = value
    descriptions: dict[str, PackageDescription] = {}
    for found in _TRANSLATION.finditer(translations):
        package, text = found.groups()
        if package in descriptions or package not in fields_of_package:
            continue
        section = fields_of_package[package].get("Section", "").rsplit("/", 1)[-1]  # "contrib/utils"
        source = fields_of_package[package].get("Source", package).split()[0]  # "Source: name (version)"
        summary, *long_lines = text.split("\n")
        descriptions[package] = PackageDescription(
            package, source, section, " ".join(summary.split()), _long_description_paragraphs(long_lines)
        )
    kept, seen_openings = [], set()
    for package in sorted(descriptions):
        description = descriptions[package]
        if _SKIPPED_NAME.search(package) or _PLACEHOLDER_SUMMARY.search(description.summary):
            continue
        if sum(len(p.split()) for p in description.paragraphs) < MIN_DESCRIPTION_WORDS:
            continue
        opening = normalized(description.paragraphs[0])
        if opening in seen_openings:
            continue
        seen_openings.add(opening)
        kept.append(description)
    return kept


@cache
def load_descriptions() -> tuple[PackageDescription, ...]:
    """Every kept description of the apt index (fetched on first use)."""
    lists = debian_lists()

    def joined(pattern: str) -> str:
        return "\n\n".join(path.read_text(encoding="utf-8") for path in sorted(lists.glob(pattern)))

    translations = joined("*_Translation-en")
    if not translations:
        raise RuntimeError(f"{lists}: apt fetched no *_Translation-en index; its sources may lack English descriptions")
    return tuple(parse_descriptions(joined("*_Packages"), translations))


def summary_to_description_examples(split: Split, instruction: str) -> list[TrainingExample]:
    """Package summary -> long description (first 100 words); hard negative from the same section."""
    pairs = (
        GroupedPair(d.summary, truncate_words(" ".join(d.paragraphs)), d.section, d.source)
        for d in load_descriptions()
        if split_of("debian", d.source) == split
    )
    return grouped_examples(pairs, instruction, "debian-package-description")
