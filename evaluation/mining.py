"""How often hard-negative mining returns false negatives: planted ones, with and without the filter.

    python -m evaluation.mining --model smollm2-135m-instruct [--examples 300] [--distractors 1500] \\
        [--ranks 1:30,10:100] [--negatives 7]

The planted set: WordNet usage example -> definition rows, each with three false negatives
planted in the candidate pool beside other rows' definitions (:func:`plant_false_negatives`,
:func:`wordnet_planted_set`):

* ``copy``: the positive with its first letter capitalised and its final period toggled;
* ``near_copy``: the positive with its middle word left out (positives of six words or more);
* ``paraphrase``: the GCIDE definition of the same single-sense word, the same meaning in
  other words (``data/sources/gcide.py``).

Each rule is mined three times (:func:`data.hard_negatives.mine_hard_negatives`) from one
encoding of the texts: with the whole false-negative filter, with its duplicate tests only
(no margin), and without it. The table gives the share of mined negatives that are planted
false negatives, overall and by kind, how many negatives came from below the rank window,
and what the filter dropped. Natural
false negatives (another definition that fits the usage) are not counted: the rates are of
the planted ones only.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from data.formats import TrainingExample
from data.hard_negatives import Encode, MiningRule, mine_hard_negatives
from data.sources.gcide import definition_paraphrase_examples, load_gcide
from data.sources.wordnet import load_wordnet, usage_to_definition_examples
from echo_base import BadInputError
from echo_base.cli import ArgumentParser, positive_int
from evaluation.cli import parse_list
from models import EchoEncoder

PLANTED_KINDS = ("copy", "near_copy", "paraphrase")
_USAGE_INSTRUCTION = "Given a word usage example, retrieve the definition of the word as used"
_SAMPLE_SEED = 0


@dataclass(frozen=True)
class PlantedSet:
    """Examples to mine, the candidate pool, and the false negatives planted in it for each query."""

    examples: list[TrainingExample]
    corpus: list[str]
    planted: dict[str, dict[str, str]]  # query -> {planted text: its kind}


def copy_of(text: str) -> str:
    """The same text as far as :func:`data.hard_negatives.normalized_text` sees: first letter capitalised, final period toggled."""
    capitalised = text[:1].upper() + text[1:]
    return capitalised[:-1] if capitalised.endswith(".") else capitalised + "."


def near_copy_of(text: str) -> str | None:
    """The text without its middle word (None for texts of fewer than six words: one word would change too much)."""
    words = text.split()
    if len(words) < 6:
        return None
    middle = len(words) // 2
    return " ".join(words[:middle] + words[middle + 1 :])


def plant_false_negatives(examples: Sequence[TrainingExample], paraphrase_of: Mapping[str, str],
                          distractors: Sequence[str] = ()) -> PlantedSet:
    """Plant a copy, a near copy and (where ``paraphrase_of`` has one) a paraphrase of each example's positive.

    The pool holds every positive and negative of ``examples``, the ``distractors`` and the
    planted texts; a planted text is a false negative of every query whose positive it copies.
    """
    planted: dict[str, dict[str, str]] = {}
    for example in examples:
        variants = {"copy": copy_of(example.positive), "near_copy": near_copy_of(example.positive),
                    "paraphrase": paraphrase_of.get(example.positive)}
        for kind, text in variants.items():
            if text is not None and text != example.positive:
                planted.setdefault(example.query, {})[text] = kind
    corpus = [text for example in examples for text in (example.positive, *example.negatives)]
    corpus += [*distractors, *(text for texts in planted.values() for text in texts)]
    return PlantedSet(list(examples), list(dict.fromkeys(corpus)), planted)


def false_negative_rates(mined: Sequence[TrainingExample], planted: Mapping[str, Mapping[str, str]]) -> dict[str, float]:
    """The share of mined negatives that are planted false negatives of their query: ``all`` and by kind."""
    kinds = [planted.get(example.query, {}).get(negative) for example in mined for negative in example.negatives]
    if not kinds:
        raise ValueError("no negatives were mined")
    rates = {"all": sum(kind is not None for kind in kinds) / len(kinds)}
    rates.update({kind: kinds.count(kind) / len(kinds) for kind in PLANTED_KINDS})
    return rates


def _encode_once(encode: Encode) -> Encode:
    """``encode`` with each distinct call (texts, kind, instructions) computed once: every rule mines from one encoding."""
    done: dict[tuple, np.ndarray] = {}

    def encode_once(texts: list[str], kind: str, instructions: list[str | None] | None) -> np.ndarray:
        key = (tuple(texts), kind, None if instructions is None else tuple(instructions))
        if key not in done:
            done[key] = encode(texts, kind, instructions)
        return done[key]

    return encode_once


def measure(planted_set: PlantedSet, encode: Encode, rules: Sequence[MiningRule]) -> list[dict]:
    """For each rule, with its filter, with its duplicate tests only and without a filter: the mined
    negatives' planted false-negative rates and the mining's counts."""
    encode = _encode_once(encode)
    rows = []
    for rule in rules:
        variants = {f"margin {rule.margin} + duplicates": rule, "duplicates only": replace(rule, margin=None),
                    "off": replace(rule, filter_false_negatives=False)}
        for name, variant in variants.items():
            mined, stats = mine_hard_negatives(planted_set.examples, encode, variant, planted_set.corpus)
            rows.append({"ranks": f"{rule.first_rank}:{rule.last_rank}", "filter": name, "negatives": stats.negatives,
                         "below_window": stats.from_below_window, "dropped": dict(stats.dropped),
                         "rates": false_negative_rates(mined, planted_set.planted)})
    return rows


def wordnet_planted_set(count: int, distractor_rows: int = 1500) -> PlantedSet:
    """``count`` usage -> definition rows (a seeded sample of WordNet's training split) whose definition
    has a GCIDE paraphrase, planted; the definitions of ``distractor_rows`` other rows are distractors.

    The training split has the most paraphrased definitions (the test split, 164), and mining
    them trains nothing: this set scores the miner, not a model.
    """
    wordnet = load_wordnet()
    usage = usage_to_definition_examples(wordnet, "train", _USAGE_INSTRUCTION)
    paraphrase_of = {row.positive: row.query for row in definition_paraphrase_examples(wordnet, load_gcide(), "train", "")}
    candidates = [example for example in usage if example.positive in paraphrase_of]
    if len(candidates) < count:
        raise BadInputError(f"--examples {count}: the training split has {len(candidates)} rows with a paraphrase")
    rng = random.Random(_SAMPLE_SEED)
    chosen = rng.sample(candidates, count)
    others = rng.sample([example for example in usage if example.positive not in paraphrase_of], distractor_rows)
    distractors = [text for example in others for text in (example.positive, *example.negatives)]
    return plant_false_negatives(chosen, paraphrase_of, distractors)


def format_table(rows: list[dict]) -> str:
    """Markdown: one line per (rank window, filter), with the candidates the filter dropped (planted or not)."""
    lines = ["| ranks | filter | negatives (below the window) | planted false negatives | copy | near copy "
             "| paraphrase | dropped: score / duplicate / near duplicate |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        rates = row["rates"]
        dropped = " / ".join(str(row["dropped"][reason]) for reason in ("score", "duplicate", "near_duplicate"))
        lines.append(f"| {row['ranks']} | {row['filter']} | {row['negatives']} ({row['below_window']}) | "
                     f"{rates['all']:.3f} | " + " | ".join(f"{rates[kind]:.3f}" for kind in PLANTED_KINDS)
                     + f" | {dropped} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the table; 2 with one line on bad input."""
    parser = ArgumentParser(prog="python -m evaluation.mining", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the model that ranks (default: %(default)s)")
    parser.add_argument("--examples", type=positive_int, default=300, help="planted rows (default: 300)")
    parser.add_argument("--distractors", type=positive_int, default=1500,
                        help="other usage rows whose definitions join the pool (default: 1500)")
    parser.add_argument("--ranks", default="1:30,10:100", help="rank windows FIRST:LAST, comma-separated")
    parser.add_argument("--negatives", type=positive_int, default=7, help="negatives per row (default: 7)")
    parser.add_argument("--margin", type=float, default=MiningRule.margin)
    parser.add_argument("--near-duplicate", type=float, default=MiningRule.near_duplicate)
    try:
        args = parser.parse_args(argv)
        windows = [window.partition(":") for window in parse_list(args.ranks, "--ranks")]
        try:
            rules = [MiningRule(int(first), int(last), args.negatives, args.margin, args.near_duplicate)
                     for first, _, last in windows]
        except ValueError as error:
            raise BadInputError(f"--ranks/--margin/--near-duplicate: {error}") from None
        planted_set = wordnet_planted_set(args.examples, args.distractors)
        encoder = EchoEncoder.from_pretrained(args.model)
    except BadInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def encode(texts: list[str], kind: str, instructions: list[str | None] | None) -> np.ndarray:
        return encoder.encode(texts, kind=kind, instruction=instructions, show_progress=True)

    rows = measure(planted_set, encode, rules)
    print(f"{args.model} ({encoder.template_set}/{encoder.pooling}): {len(planted_set.examples)} planted rows, "
          f"{len(planted_set.corpus)} candidates, margin {args.margin}, near-duplicate {args.near_duplicate}\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
