"""Build the cached training mix and evaluation tasks from real offline sources.

``prepare_training_mix`` writes ``train/<dataset>.jsonl`` (``echo`` format, one file per
dataset, an E5-style instruction in each row), a ``dev/`` retrieval task from the dev
splits, ``SOURCES.md`` and ``manifest.json``. ``prepare_eval_tasks`` writes task folders
from the test splits and from sources never used for training. Both build through
:func:`echo_base.atomic_folder` (a staging folder, fsynced and renamed into place), so a
failure never leaves a half-written result, and both return the cached result unless it
is missing or ``force=True``.

No dev or test text appears in any training file: every source splits by its natural
unit, and texts that recur across units (a repeated verse, a shared definition) are
removed from dev and test against all train-split texts. Sources that evaluation tasks use
whole (:data:`HELD_OUT_SOURCES`: movie reviews, the Brown corpus, SpamAssassin, the Perl
FAQ) feed no training dataset.

A mix may derive from another (:data:`DERIVED_MIXES`): it keeps that mix's rows, and in its
mined datasets each row keeps query and positive and takes negatives from a lexical ranking
of the dataset's whole train split (:mod:`data.lexical`, a rank window with the
false-negative filter of :mod:`data.hard_negatives`), in place of the source's heuristic ones.

Run ``python -m data.prepare [--force] [--only training|eval] [--mix NAME]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from echo_base import BadInputError, atomic_folder, cache_dir, recover_folder
from data.formats import TrainingExample, write_jsonl, write_task
from data.hard_negatives import MiningRule, mine_hard_negatives
from data.lexical import LexicalEncoder
from data.sources import (
    bible,
    brown,
    cheat,
    debian,
    faqs,
    gcide,
    manpages,
    movie_reviews,
    python_docs,
    spam_assassin,
    wordnet,
)
from data.sources.split import Split
from data.sources.text import normalized


@dataclass(frozen=True)
class TrainingSource:
    """One training dataset: how to build its examples for a split, and where it comes from."""

    name: str
    instruction: str
    build: Callable[[Split, str], list[TrainingExample]]  # (split, instruction) -> examples
    source: str
    license: str


TRAINING_SOURCES = [
    TrainingSource(
        "wordnet-usage-definition",
        "Given a word usage example, retrieve the definition of the word as used",
        lambda split, instruction: wordnet.usage_to_definition_examples(wordnet.load_wordnet(), split, instruction),
        wordnet.SOURCE,
        wordnet.LICENSE,
    ),
    TrainingSource(
        "gcide-wordnet-definition",
        "Given a dictionary definition, retrieve a definition of the same meaning from another dictionary",
        lambda split, instruction: gcide.definition_paraphrase_examples(
            wordnet.load_wordnet(), gcide.load_gcide(), split, instruction
        ),
        f"{gcide.SOURCE}; {wordnet.SOURCE}",
        f"{gcide.LICENSE}; {wordnet.LICENSE}",
    ),
    TrainingSource(
        "bible-kjv-web",
        "Given a Bible verse in archaic English, retrieve the same verse in modern English",
        lambda split, instruction: bible.paraphrase_examples("kjv", "web", split, instruction, "bible-kjv-web"),
        bible.SOURCE,
        bible.LICENSE,
    ),
    TrainingSource(
        "python-docstring-code",
        "Given a description of a Python function, retrieve the code of the function",
        python_docs.docstring_to_code_examples,
        python_docs.SOURCE,
        python_docs.LICENSE,
    ),
    TrainingSource(
        "debian-package-description",
        "Given the one-line summary of a software package, retrieve the full description of the package",
        debian.summary_to_description_examples,
        debian.SOURCE,
        debian.LICENSE,
    ),
    TrainingSource(
        "manpage-name-description",
        "Given the name line of a Unix manual page, retrieve the description of what it documents",
        manpages.name_to_description_examples,
        manpages.SOURCE,
        manpages.LICENSE,
    ),
    TrainingSource(
        "python-faq-answer",
        "Given a question about Python, retrieve the answer from the Python FAQ",
        faqs.python_faq_examples,
        faqs.PYTHON_SOURCE,
        faqs.PYTHON_LICENSE,
    ),
    TrainingSource(
        "cheat-comment-command",
        "Given a task to do with a command-line tool, retrieve the shell command that does it",
        cheat.comment_to_command_examples,
        cheat.SOURCE,
        cheat.LICENSE,
    ),
]
SOURCE_BY_NAME = {source.name: source for source in TRAINING_SOURCES}
# Sources that evaluation tasks use whole: no training dataset may draw on them.
HELD_OUT_SOURCES = (movie_reviews.SOURCE, brown.SOURCE, spam_assassin.SOURCE, faqs.PERL_SOURCE)

# Mix name -> rows kept per training dataset (a seeded sample; None keeps all). A
# dataset's share of the contrastive batches is its share of the rows.
MIXES: dict[str, dict[str, int | None]] = {
    "default": {
        "wordnet-usage-definition": 8000,
        "gcide-wordnet-definition": 8000,
        "bible-kjv-web": 8000,
        "python-docstring-code": 8000,
    },
    # Eight datasets over five task families (title -> body, question -> answer, text ->
    # command, definition and paraphrase, code). The large ones are capped so the small
    # ones (man pages, cheat sheets, the Python FAQ: all their rows) still get batches.
    "broad": {
        "debian-package-description": 4000,
        "manpage-name-description": None,
        "python-faq-answer": None,
        "cheat-comment-command": None,
        "wordnet-usage-definition": 3000,
        "gcide-wordnet-definition": 3000,
        "python-docstring-code": 3000,
        "bible-kjv-web": 2000,
    },
}


@dataclass(frozen=True)
class DerivedMix:
    """A mix that keeps another mix's rows and mines the negatives of some of its datasets."""

    base: str  # the mix whose rows (the same seeded sample) it keeps
    mined: tuple[str, ...]  # datasets whose negatives come from a lexical ranking (MIX_MINING_RULE)


# `broad-mined`: mined negatives where the source's own are weak (a Debian package or a man
# page of the same section: mostly unrelated texts). `broad-paraphrase-mined` (the default):
# mined negatives for the paraphrase and definition datasets, whose own negatives (the next
# verse, another word's definition) share little wording with the query; a negative that does
# teaches meaning over word overlap (README, "The default recipe": +0.005 on the mean).
DERIVED_MIXES: dict[str, DerivedMix] = {
    "broad-mined": DerivedMix("broad", mined=("debian-package-description", "manpage-name-description")),
    "broad-paraphrase-mined": DerivedMix(
        "broad", mined=("bible-kjv-web", "gcide-wordnet-definition", "wordnet-usage-definition")
    ),
}
MIXES.update({name: dict(MIXES[derived.base]) for name, derived in DERIVED_MIXES.items()})
# Hardest first, so data.num_negatives=1 trains on the top survivor of ranks 10..100. The
# duplicate tests only: under a ranker that often scores the positive low (a lexical one here),
# the margin test drops the whole window (README, "Measured false negatives").
MIX_MINING_RULE = MiningRule(negatives=3, margin=None)
DEV_QUERIES_PER_DATASET = 50
DEV_CORPUS_PER_DATASET = 500
RETRIEVAL_QUERIES = 300
RETRIEVAL_CORPUS = 3000
# Stored in the evaluation tasks' manifest: a cache built by another version of the task
# list is rebuilt. Raise it whenever a task is added or changes.
EVAL_TASKS_VERSION = 2
STS_PAIRS_PER_BIN = 160  # 5 score bins of Wu-Palmer similarity
CLUSTERING_ITEMS_PER_LABEL = 80


def prepare_training_mix(name: str = "default", force: bool = False) -> Path:
    """Folder of the training mix ``name`` (built if missing or ``force``).

    Holds ``train/<dataset>.jsonl`` (read with ``read_examples(path, "echo", dataset=...)``),
    ``dev/`` (a retrieval task folder), ``SOURCES.md`` and ``manifest.json``. Raises
    ``BadInputError`` listing the known mixes for an unknown name.
    """
    if name not in MIXES:
        raise BadInputError(f"unknown training mix {name!r}; known mixes: {sorted(MIXES)}")
    target = recover_folder(cache_dir("training-mixes") / name)
    if (target / "manifest.json").is_file() and not force:
        return target
    with atomic_folder(target) as folder:
        _write_training_mix(folder, name)
    return target


def prepare_eval_tasks(force: bool = False) -> dict[str, Path]:
    """Task name -> task folder for every evaluation task (built if missing or ``force``)."""
    root = cache_dir("eval-tasks")
    target = recover_folder(root / "tasks")
    manifest_path = target / "manifest.json"
    stale = not manifest_path.is_file() or json.loads(manifest_path.read_text(encoding="utf-8")).get("version") != EVAL_TASKS_VERSION
    if stale or force:
        with atomic_folder(target) as folder:
            _write_eval_tasks(folder)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return {task: target / task for task in manifest["tasks"]}


def train_split_texts() -> set[str]:
    """Normalised texts of every train-split example of every training source, uncapped.

    Dev and test items are filtered against this set, so they stay disjoint from any mix.
    """
    texts: set[str] = set()
    for source in TRAINING_SOURCES:
        for example in source.build("train", source.instruction):
            texts.update(normalized(text) for text in (example.query, example.positive, *example.negatives))
    return texts


def _without_texts(examples: list[TrainingExample], excluded: set[str]) -> list[TrainingExample]:
    return [
        example
        for example in examples
        if not any(normalized(text) in excluded for text in (example.query, example.positive, *example.negatives))
    ]


def _write_training_mix(folder: Path, name: str) -> None:
    (folder / "train").mkdir()
    counts: dict[str, int] = {}
    dev_examples: dict[str, list[TrainingExample]] = {}
    train_texts: set[str] = set()
    derived = DERIVED_MIXES.get(name, DerivedMix(name, mined=()))
    for source_name, cap in MIXES[name].items():
        source = SOURCE_BY_NAME[source_name]
        examples = source.build("train", source.instruction)
        train_texts.update(normalized(t) for e in examples for t in (e.query, e.positive, *e.negatives))
        random.Random(f"{derived.base}:{source_name}").shuffle(examples)  # a derived mix samples its base mix's rows
        kept = examples if cap is None else examples[:cap]
        if source_name in derived.mined:
            kept = _with_mined_negatives(kept, pool_of=examples)
        counts[f"train/{source_name}.jsonl"] = write_jsonl(
            folder / "train" / f"{source_name}.jsonl", (e.to_json() for e in kept)
        )
        dev_examples[source_name] = source.build("dev", source.instruction)
    dev_files = _dev_retrieval_files(
        {source_name: _without_texts(examples, train_texts) for source_name, examples in dev_examples.items()}
    )
    dev_meta = {
        "name": f"{name}-dev",
        "type": "retrieval",
        "instruction": "Given a query, retrieve the text that matches it",
        "symmetric": False,
        "source": "dev splits of the training datasets: " + ", ".join(MIXES[name]),
        "license": "; ".join(sorted({SOURCE_BY_NAME[s].license for s in MIXES[name]})),
        "description": (
            f"{DEV_QUERIES_PER_DATASET} dev queries per training dataset against their positives, hard negatives "
            "and other dev documents; each query row also carries its dataset's instruction"
        ),
    }
    counts.update({f"dev/{file}": n for file, n in write_task(folder / "dev", dev_meta, dev_files).items()})
    sources = {s: {"source": SOURCE_BY_NAME[s].source, "license": SOURCE_BY_NAME[s].license} for s in MIXES[name]}
    _write_manifest(folder, {"mix": name, "sources": sources, "counts": counts})
    _write_sources_md(
        folder / "SOURCES.md",
        f"Training mix `{name}`",
        [(s, SOURCE_BY_NAME[s].source, SOURCE_BY_NAME[s].license, SOURCE_BY_NAME[s].instruction) for s in MIXES[name]],
        counts,
    )


def _with_mined_negatives(examples: list[TrainingExample], pool_of: list[TrainingExample]) -> list[TrainingExample]:
    """The examples with negatives mined by a lexical ranking (:data:`MIX_MINING_RULE`) of ``pool_of``'s texts.

    ``pool_of`` is the dataset's whole train split, not only the rows a capped mix keeps: a
    larger pool holds harder negatives. Its rows are known pairs too, so a query that recurs in
    a row the mix drops (a repeated verse) is never given that row's positive as a negative.
    """
    pool = list(dict.fromkeys(text for example in pool_of for text in (example.positive, *example.negatives)))
    mined, _ = mine_hard_negatives(examples, LexicalEncoder(pool + [example.query for example in pool_of]),
                                   MIX_MINING_RULE, corpus=pool, known_pairs=pool_of)
    return mined


def _dev_retrieval_files(examples_by_dataset: dict[str, list[TrainingExample]]) -> dict[str, list[dict[str, Any]]]:
    """One retrieval task over all datasets: a few queries each, the rest as distractors."""
    queries: list[tuple[TrainingExample, str]] = []
    distractors: list[str] = []
    for dataset, examples in examples_by_dataset.items():
        shuffled = list(examples)
        random.Random(f"dev:{dataset}").shuffle(shuffled)
        queries.extend((example, example.instruction or "") for example in shuffled[:DEV_QUERIES_PER_DATASET])
        distractors.extend(e.positive for e in shuffled[DEV_QUERIES_PER_DATASET:DEV_CORPUS_PER_DATASET])
    files = retrieval_files([example for example, _ in queries], distractors, corpus_size=None)
    for row, (_, instruction) in zip(files["queries.jsonl"], queries):
        row["instruction"] = instruction
    return files


def retrieval_files(
    query_examples: Sequence[TrainingExample], distractors: Sequence[str], corpus_size: int | None
) -> dict[str, list[dict[str, Any]]]:
    """Queries, corpus and qrels for retrieval: each query's positive is its one relevant doc.

    The corpus holds every positive and hard negative of the queries, then distractors
    until ``corpus_size`` (all of them when None). Identical texts share one document id.
    Queries with the same text keep their first row.
    """
    doc_id_of_text: dict[str, str] = {}

    def doc_id(text: str) -> str:
        return doc_id_of_text.setdefault(text, f"d{len(doc_id_of_text)}")

    queries, qrels, seen_queries = [], [], set()
    for example in query_examples:
        if example.query in seen_queries:
            continue
        seen_queries.add(example.query)
        query_id = f"q{len(queries)}"
        queries.append({"id": query_id, "text": example.query})
        qrels.append({"query_id": query_id, "doc_id": doc_id(example.positive), "relevance": 1})
        for negative in example.negatives:
            doc_id(negative)
    for text in distractors:
        if corpus_size is not None and len(doc_id_of_text) >= corpus_size:
            break
        doc_id(text)
    corpus = [{"id": identifier, "text": text} for text, identifier in doc_id_of_text.items()]
    return {"queries.jsonl": queries, "corpus.jsonl": corpus, "qrels.jsonl": qrels}


def _retrieval_task_from_examples(
    examples: list[TrainingExample], seed: str, num_queries: int = RETRIEVAL_QUERIES
) -> dict[str, list[dict[str, Any]]]:
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    query_examples = shuffled[:num_queries]
    distractors = [text for e in shuffled[num_queries:] for text in (e.positive, *e.negatives)]
    return retrieval_files(query_examples, distractors, RETRIEVAL_CORPUS)


def _all_queries_retrieval_task(examples: list[TrainingExample]) -> dict[str, list[dict[str, Any]]]:
    """Every example a query; the corpus is their positives and negatives (a small source used whole)."""
    return retrieval_files(examples, [], corpus_size=None)


def wordnet_sts_pairs(excluded: set[str]) -> list[dict[str, Any]]:
    """Definition pairs of test-split noun synsets scored by Wu-Palmer similarity.

    Each sampled synset is paired with a nearby test synset (under its grandparent) and a
    random one; pairs are balanced over five score bins of width 0.2.
    """
    net = wordnet.load_wordnet()
    nouns = sorted(
        s.id
        for s in net.synsets.values()
        if s.pos == "n" and net.split(s.id) == "test" and normalized(s.definition) not in excluded
    )
    test_nouns = set(nouns)
    rng = random.Random("wordnet-sts")
    bins: list[list[dict[str, Any]]] = [[] for _ in range(5)]
    seen_pairs = set()
    for first in rng.sample(nouns, min(len(nouns), 3000)):
        near = [s for s in _descendants_of_grandparents(net, first) if s in test_nouns and s != first]
        partners = [rng.choice(near)] if near else []
        partners.append(rng.choice(nouns))
        for second in partners:
            pair = tuple(sorted((first, second)))
            first_text, second_text = net.synsets[pair[0]].definition, net.synsets[pair[1]].definition
            if first == second or pair in seen_pairs or normalized(first_text) == normalized(second_text):
                continue
            seen_pairs.add(pair)
            score = wordnet.wu_palmer(net, *pair)
            bins[min(int(score * 5), 4)].append({"text1": first_text, "text2": second_text, "score": round(score, 4)})
    pairs = [pair for score_bin in bins for pair in score_bin[:STS_PAIRS_PER_BIN]]
    rng.shuffle(pairs)  # no score order in the file
    return pairs


def _descendants_of_grandparents(net: wordnet.WordNet, synset_id: str) -> set[str]:
    """Synsets at most three hyponym steps below the synset's grandparents."""
    grandparents = {g for parent in net.synsets[synset_id].hypernyms for g in net.synsets[parent].hypernyms}
    found, frontier = set(), set(grandparents)
    for _ in range(3):
        frontier = {child for node in frontier for child in net.hyponyms.get(node, ())} - found
        found |= frontier
    return found


def wordnet_lexname_items(excluded: set[str]) -> list[dict[str, str]]:
    """Test-split noun definitions labelled by lexicographer file, at most 80 per label."""
    net = wordnet.load_wordnet()
    by_label: dict[str, list[str]] = {}
    seen = set()
    for synset in net.synsets.values():
        text = normalized(synset.definition)
        if synset.pos == "n" and net.split(synset.id) == "test" and text not in excluded and text not in seen:
            seen.add(text)
            by_label.setdefault(synset.lexname, []).append(synset.definition)
    items = []
    for label in sorted(by_label):
        definitions = by_label[label]
        random.Random(f"lexname:{label}").shuffle(definitions)
        items.extend({"text": text, "label": label} for text in definitions[:CLUSTERING_ITEMS_PER_LABEL])
    return items


def _task_meta(name: str, task_type: str, instruction: str, symmetric: bool, source: str, license: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": task_type,
        "instruction": instruction,
        "symmetric": symmetric,
        "source": source,
        "license": license,
        "description": description,
    }


def _write_eval_tasks(folder: Path) -> None:
    excluded = train_split_texts()
    net = wordnet.load_wordnet()
    usage = SOURCE_BY_NAME["wordnet-usage-definition"]
    code = SOURCE_BY_NAME["python-docstring-code"]
    bible_instruction = "Given a Bible verse, retrieve the same verse in another English translation"
    subject_instruction = "Given the subject line of an e-mail, retrieve the body of the e-mail"
    perl_instruction = "Given a question about Perl, retrieve the answer from the Perl FAQ"
    tasks: list[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = [
        (
            _task_meta("wordnet-gloss-retrieval", "retrieval", usage.instruction, False, wordnet.SOURCE, wordnet.LICENSE,
                       "test-split synsets: '<word>: <usage example>' -> the definition of that sense; corpus holds "
                       "other senses of the same words and other test definitions"),
            _retrieval_task_from_examples(
                _without_texts(wordnet.usage_to_definition_examples(net, "test", usage.instruction), excluded), "wn-gloss"
            ),
        ),
        (
            _task_meta("bible-paraphrase-retrieval", "retrieval", bible_instruction, False, bible.SOURCE, bible.LICENSE,
                       "test-split chapters: an ASV verse -> the same verse in the WEB; corpus holds neighbouring and "
                       "other test verses (training used KJV queries)"),
            _retrieval_task_from_examples(
                _without_texts(bible.paraphrase_examples("asv", "web", "test", bible_instruction, "bible-asv-web"), excluded),
                "bible",
            ),
        ),
        (
            _task_meta("python-code-retrieval", "retrieval", code.instruction, False, python_docs.SOURCE, python_docs.LICENSE,
                       "test-split standard-library modules: docstring summary -> function code"),
            # The test modules hold ~480 documented functions: the other ~180 are the distractors.
            _retrieval_task_from_examples(_without_texts(code.build("test", code.instruction), excluded), "python"),
        ),
        (
            _task_meta("spam-assassin-subject-retrieval", "retrieval", subject_instruction, False,
                       spam_assassin.SOURCE, spam_assassin.LICENSE,
                       "e-mail subject -> its body (ham and spam, one message per thread); corpus holds messages "
                       "of the same group and others; never used for training"),
            _retrieval_task_from_examples(
                _without_texts(spam_assassin.subject_to_body_examples(subject_instruction), excluded), "spam"
            ),
        ),
        (
            _task_meta("perl-faq-retrieval", "retrieval", perl_instruction, False, faqs.PERL_SOURCE, faqs.PERL_LICENSE,
                       "every Perl FAQ question (perlfaq1-9, perlunifaq) -> its answer; corpus holds all the "
                       "answers; never used for training (training has the Python FAQ)"),
            _all_queries_retrieval_task(_without_texts(faqs.perl_faq_examples(perl_instruction), excluded)),
        ),
        (
            _task_meta("wordnet-sts", "sts", "Retrieve semantically similar text", True, wordnet.SOURCE, wordnet.LICENSE,
                       "pairs of test-split noun definitions scored by the Wu-Palmer similarity of their synsets, "
                       "balanced over five score bins"),
            {"pairs.jsonl": wordnet_sts_pairs(excluded)},
        ),
        (
            _task_meta("movie-polarity", "classification", "Classify the sentiment of a movie review sentence",
                       True, movie_reviews.SOURCE, movie_reviews.LICENSE,
                       "Pang & Lee sentence polarity (positive / negative); never used for training"),
            movie_reviews_files(),
        ),
        (
            _task_meta("wordnet-lexname-clustering", "clustering", "Identify the semantic category of a word definition",
                       True, wordnet.SOURCE, wordnet.LICENSE,
                       "test-split noun definitions grouped by WordNet lexicographer file (noun.animal, noun.artifact, ...)"),
            {"items.jsonl": wordnet_lexname_items(excluded)},
        ),
        (
            _task_meta("brown-genre-clustering", "clustering", "Identify the genre of a passage", True,
                       brown.SOURCE, brown.LICENSE,
                       "paragraphs of the Brown corpus grouped by its 15 genres; never used for training"),
            {"items.jsonl": brown.genre_paragraphs()},
        ),
    ]
    counts: dict[str, int] = {}
    for meta, files in tasks:
        for file, count in write_task(folder / meta["name"], meta, files).items():
            counts[f"{meta['name']}/{file}"] = count
    _write_manifest(folder, {"version": EVAL_TASKS_VERSION, "tasks": [meta["name"] for meta, _ in tasks], "counts": counts})
    _write_sources_md(
        folder / "SOURCES.md",
        "Evaluation tasks",
        [(meta["name"], meta["source"], meta["license"], meta["instruction"]) for meta, _ in tasks],
        counts,
    )


def movie_reviews_files() -> dict[str, list[dict[str, str]]]:
    """The movie-polarity classification files (``train.jsonl``, ``test.jsonl``)."""
    splits = movie_reviews.polarity_sentences()
    return {"train.jsonl": splits["train"], "test.jsonl": splits["test"]}


def _write_manifest(folder: Path, content: dict[str, Any]) -> None:
    manifest = {
        **content,
        "python": sys.version.split()[0],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_sources_md(path: Path, title: str, rows: list[tuple[str, str, str, str]], counts: dict[str, int]) -> None:
    lines = [f"# {title}: sources and licences", "", "Prepared on this machine by `python -m data.prepare`.", ""]
    for name, source, license, instruction in rows:
        lines += [f"## {name}", f"- source: {source}", f"- licence: {license}", f"- instruction: {instruction}", ""]
    lines += ["## Row counts", ""] + [f"- `{file}`: {count}" for file, count in sorted(counts.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build (or reuse) the training mix and/or the evaluation tasks; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--only", choices=["training", "eval"], help="build only one of the two")
    parser.add_argument("--mix", default="default", choices=sorted(MIXES), help="training mix name")
    args = parser.parse_args(argv)
    try:
        if args.only in (None, "training"):
            started = time.perf_counter()
            folder = prepare_training_mix(args.mix, force=args.force)
            _print_built(f"training mix {args.mix!r}", folder, time.perf_counter() - started)
        if args.only in (None, "eval"):
            started = time.perf_counter()
            tasks = prepare_eval_tasks(force=args.force)
            _print_built(f"{len(tasks)} evaluation tasks", next(iter(tasks.values())).parent, time.perf_counter() - started)
    except BadInputError as error:  # a source this system cannot provide (no apt-get): one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _print_built(what: str, folder: Path, seconds: float) -> None:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    print(f"{what}: {folder} ({seconds:.1f} s)")
    for file, count in sorted(manifest["counts"].items()):
        print(f"  {count:6d}  {file}")


if __name__ == "__main__":
    sys.exit(main())
