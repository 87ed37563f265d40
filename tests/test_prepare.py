"""Data preparation: parsers on hand-written lines, splitting, task files, atomic builds, and
the real prepared training mix and evaluation tasks (no dev/test text in training)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data import prepare
from echo_base import BadInputError, cache_dir
from data.formats import TASK_FILES, TASK_META_KEYS, TrainingExample, read_examples
from data.lexical import LexicalEncoder
from data.sources.bible import _clean_verse, chapter_of
from data.sources.brown import _detokenize
from data.sources.split import split_of
from data.sources.text import normalized
from data.sources.wordnet import WordNet, _parse_data_file, wu_palmer

# Two real lines of WordNet 3.0 data.noun (pointers shortened to the hypernyms and one hyponym).
DOG_LINE = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 003 @ 02083346 n 0000 @ 01317541 n 0000 "
    '~ 01322604 n 0000 | a member of the genus Canis (probably descended from the common wolf) that has been '
    'domesticated by man since prehistoric times; occurs in many breeds; "the dog barked all night"  '
)
LICENCE_LINE = "  1 This software and database is being provided to you, the LICENSEE, by  "


def test_wordnet_data_line_is_parsed_into_a_synset() -> None:
    (synset,) = list(_parse_data_file(LICENCE_LINE + "\n" + DOG_LINE, "n", {5: "noun.animal"}, "data.noun"))
    assert synset.id == "n02084071"
    assert synset.lexname == "noun.animal"
    assert synset.lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert synset.hypernyms == ("n02083346", "n01317541")
    assert synset.definition.endswith("since prehistoric times; occurs in many breeds")
    assert synset.examples == ("the dog barked all night",)


def _toy_wordnet(parents: dict[str, tuple[str, ...]]) -> WordNet:
    from data.sources.wordnet import Synset

    synsets = {i: Synset(i, "n", "noun.Tops", (i,), f"def {i}", (), p) for i, p in parents.items()}
    return WordNet(synsets, {i: (i,) for i in parents}, {})


def test_wu_palmer_matches_a_hand_computed_tree() -> None:
    # root <- a <- b <- c ; root <- a <- d.  lcs(c, d) = a at depth 2 (root = 1):
    # 2*2 / (2 + 1 + 2*2) = 4/7.  lcs(c, c) = c at depth 4: 8/8 = 1.
    net = _toy_wordnet({"root": (), "a": ("root",), "b": ("a",), "c": ("b",), "d": ("a",), "x": ()})
    assert wu_palmer(net, "c", "d") == pytest.approx(4 / 7)
    assert wu_palmer(net, "c", "c") == 1.0
    assert wu_palmer(net, "c", "x") == 0.0


def test_split_is_stable_and_roughly_80_10_10() -> None:
    assert split_of("wordnet", "n02084071") == split_of("wordnet", "n02084071")
    counts = Counter(split_of("unit-test", str(unit)) for unit in range(20000))
    assert abs(counts["train"] / 20000 - 0.8) < 0.02
    assert abs(counts["dev"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.1) < 0.01


def test_verse_and_brown_cleanup() -> None:
    assert _clean_verse(" 2. And the earth was without form; and darkness [was] upon the deep.\n") == (
        "And the earth was without form; and darkness was upon the deep."
    )
    assert _clean_verse("4. God`s Spirit") == "God's Spirit"
    assert chapter_of(43003016) == 43003
    assert _detokenize("The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, he/pps said/vbd ./.") == (
        'The jury said " no evidence ", he said.'
    )


def test_retrieval_files_dedupe_texts_and_point_qrels_at_positives() -> None:
    examples = [
        TrainingExample("q one", "doc A", ("doc B",), None, "d"),
        TrainingExample("q two", "doc B", ("doc A",), None, "d"),
        TrainingExample("q one", "doc C", (), None, "d"),  # repeated query text: dropped
    ]
    files = prepare.retrieval_files(examples, ["doc C", "doc D", "doc E"], corpus_size=4)
    assert files["queries.jsonl"] == [{"id": "q0", "text": "q one"}, {"id": "q1", "text": "q two"}]
    assert files["corpus.jsonl"] == [
        {"id": "d0", "text": "doc A"},
        {"id": "d1", "text": "doc B"},
        {"id": "d2", "text": "doc C"},
        {"id": "d3", "text": "doc D"},
    ]
    assert files["qrels.jsonl"] == [
        {"query_id": "q0", "doc_id": "d0", "relevance": 1},
        {"query_id": "q1", "doc_id": "d1", "relevance": 1},
    ]


def test_unknown_mix_is_named() -> None:
    with pytest.raises(BadInputError, match="unknown training mix 'nope'"):
        prepare.prepare_training_mix("nope")


def test_eval_tasks_built_by_another_task_list_version_are_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_CACHE", str(tmp_path))
    builds = []

    def write_tasks(folder: Path, version: int) -> None:
        builds.append(version)
        (folder / "only-task").mkdir()
        (folder / "manifest.json").write_text(json.dumps({"version": version, "tasks": ["only-task"]}))

    monkeypatch.setattr(prepare, "_write_eval_tasks", lambda folder: write_tasks(folder, 1))
    prepare.prepare_eval_tasks()  # an older version's cache
    monkeypatch.setattr(prepare, "_write_eval_tasks", lambda folder: write_tasks(folder, prepare.EVAL_TASKS_VERSION))
    assert prepare.prepare_eval_tasks() == {"only-task": tmp_path / "eval-tasks" / "tasks" / "only-task"}
    prepare.prepare_eval_tasks()  # current: reused
    assert builds == [1, prepare.EVAL_TASKS_VERSION]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, Path]]:
    """Build every mix and the evaluation tasks into a fresh cache root, reusing the real download cache."""
    downloads = cache_dir("downloads")
    root = tmp_path_factory.mktemp("echo-cache")
    (root / "downloads").symlink_to(downloads, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ECHO_CACHE", str(root))
        mixes = {name: prepare.prepare_training_mix(name) for name in prepare.MIXES}
        tasks = prepare.prepare_eval_tasks()
        yield mixes, tasks


def _texts_of_task(folder: Path) -> set[str]:
    meta = json.loads((folder / "task.json").read_text())
    texts = set()
    for file in TASK_FILES[meta["type"]]:
        for line in (folder / file).read_text().splitlines():
            row = json.loads(line)
            texts.update(normalized(row[key]) for key in ("text", "text1", "text2") if key in row)
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("mix_name", sorted(prepare.MIXES))
def test_training_files_read_back_with_one_hard_negative(prepared: tuple[dict[str, Path], dict[str, Path]], mix_name: str) -> None:
    mix = prepared[0][mix_name]
    manifest = json.loads((mix / "manifest.json").read_text())
    train_files = sorted((mix / "train").glob("*.jsonl"))
    assert [p.stem for p in train_files] == sorted(prepare.MIXES[mix_name])
    for path in train_files:
        examples = read_examples(path, "echo", dataset="unused", num_negatives=1)
        cap = prepare.MIXES[mix_name][path.stem]
        assert len(examples) == manifest["counts"][f"train/{path.name}"]
        assert 100 <= len(examples) <= (cap or len(examples))
        assert {e.dataset for e in examples} == {path.stem}
        assert {e.instruction for e in examples} == {prepare.SOURCE_BY_NAME[path.stem].instruction}
        assert all(e.positive != e.negatives[0] and e.query != e.positive for e in examples)
        assert all(len(text.split()) <= 100 for e in examples for text in (e.query, e.positive))
    assert "licence" in (mix / "SOURCES.md").read_text()


@pytest.mark.slow
def test_mix_records_source_and_licence_of_each_dataset(prepared: tuple[dict[str, Path], dict[str, Path]]) -> None:
    mix = prepared[0]["broad"]
    manifest = json.loads((mix / "manifest.json").read_text())
    sources_md = (mix / "SOURCES.md").read_text()
    assert set(manifest["sources"]) == set(prepare.MIXES["broad"])
    for dataset, recorded in manifest["sources"].items():
        source = prepare.SOURCE_BY_NAME[dataset]
        assert recorded == {"source": source.source, "license": source.license}
        assert f"## {dataset}\n- source: {source.source}\n- licence: {source.license}\n- instruction: {source.instruction}" in sources_md


@pytest.mark.slow
@pytest.mark.parametrize("mix_name", sorted(prepare.MIXES))
def test_no_dev_or_test_text_appears_in_training(prepared: tuple[dict[str, Path], dict[str, Path]], mix_name: str) -> None:
    mix, tasks = prepared[0][mix_name], prepared[1]
    train_texts = {
        normalized(text)
        for path in (mix / "train").glob("*.jsonl")
        for e in read_examples(path, "echo", dataset="x")
        for text in (e.query, e.positive, *e.negatives)
    }
    for folder in [mix / "dev", *tasks.values()]:
        overlap = _texts_of_task(folder) & train_texts
        assert not overlap, f"{folder.name} shares {len(overlap)} texts with training, e.g. {sorted(overlap)[:2]}"


@pytest.mark.slow
def test_eval_tasks_follow_the_folder_format(prepared: tuple[dict[str, Path], dict[str, Path]]) -> None:
    _, tasks = prepared
    types = Counter()
    for name, folder in tasks.items():
        meta = json.loads((folder / "task.json").read_text())
        assert meta["name"] == name and set(meta) == set(TASK_META_KEYS)
        types[meta["type"]] += 1
        rows = {file: [json.loads(l) for l in (folder / file).read_text().splitlines()] for file in TASK_FILES[meta["type"]]}
        if meta["type"] == "retrieval":
            query_ids = {q["id"] for q in rows["queries.jsonl"]}
            doc_ids = {d["id"] for d in rows["corpus.jsonl"]}
            assert 300 <= len(query_ids) <= 500 and len(doc_ids) >= 300
            assert len({d["text"] for d in rows["corpus.jsonl"]}) == len(doc_ids)  # no duplicate documents
            assert {r["query_id"] for r in rows["qrels.jsonl"]} == query_ids
            assert {r["doc_id"] for r in rows["qrels.jsonl"]} <= doc_ids
        elif meta["type"] == "sts":
            scores = [p["score"] for p in rows["pairs.jsonl"]]
            assert 500 <= len(scores) and all(0 <= s <= 1 for s in scores) and max(scores) - min(scores) > 0.5
        elif meta["type"] == "classification":
            assert {r["label"] for r in rows["test.jsonl"]} == {r["label"] for r in rows["train.jsonl"]} == {"positive", "negative"}
            assert len(rows["test.jsonl"]) >= 300
            assert not {r["text"] for r in rows["test.jsonl"]} & {r["text"] for r in rows["train.jsonl"]}
        else:
            assert len({r["label"] for r in rows["items.jsonl"]}) >= 10 and len(rows["items.jsonl"]) >= 300
    assert types["retrieval"] >= 2 and types["sts"] and types["classification"] and types["clustering"]
    held_out = {name for name, folder in tasks.items() if json.loads((folder / "task.json").read_text())["source"] in prepare.HELD_OUT_SOURCES}
    assert held_out == {"movie-polarity", "brown-genre-clustering", "spam-assassin-subject-retrieval", "perl-faq-retrieval"}


@pytest.mark.slow
def test_second_call_reuses_the_cache(prepared: tuple[dict[str, Path], dict[str, Path]], monkeypatch: pytest.MonkeyPatch) -> None:
    mix, tasks = prepared[0]["default"], prepared[1]
    monkeypatch.setenv("ECHO_CACHE", str(mix.parent.parent))
    stamp = (mix / "manifest.json").stat().st_mtime_ns
    monkeypatch.setattr(prepare, "atomic_folder", lambda *args: pytest.fail("rebuilt a cached result"))
    assert prepare.prepare_training_mix("default") == mix
    assert prepare.prepare_eval_tasks() == tasks
    assert (mix / "manifest.json").stat().st_mtime_ns == stamp


def test_code_truncation_keeps_whole_lines() -> None:
    from data.sources.text import truncate_keeping_lines

    code = "def f(a, b):\n    total = a + b\n    return total"
    assert truncate_keeping_lines(code, max_words=9) == "def f(a, b):\n    total = a + b"
    assert truncate_keeping_lines("one two three four", max_words=2) == "one two"


@pytest.mark.slow
def test_mined_mix_keeps_the_pairs_and_gives_lexically_harder_negatives(prepared: tuple[dict[str, Path], dict[str, Path]]) -> None:
    mixes = prepared[0]
    for mix, derived in prepare.DERIVED_MIXES.items():
        base, datasets = derived.base, derived.mined
        for dataset in set(prepare.MIXES[mix]) - set(datasets):  # the rest: the base mix's rows, unchanged
            assert (mixes[mix] / "train" / f"{dataset}.jsonl").read_bytes() == (mixes[base] / "train" / f"{dataset}.jsonl").read_bytes()
        for dataset in datasets:
            heuristic = read_examples(mixes[base] / "train" / f"{dataset}.jsonl", "echo", dataset=dataset)
            mined = read_examples(mixes[mix] / "train" / f"{dataset}.jsonl", "echo", dataset=dataset)
            assert [(e.query, e.positive) for e in mined] == [(e.query, e.positive) for e in heuristic]
            encoder = LexicalEncoder([e.positive for e in heuristic])
            queries = encoder([e.query for e in heuristic])

            def mean_similarity(examples):
                return float(np.mean(np.sum(queries * encoder([e.negatives[0] for e in examples]), axis=1)))

            assert mean_similarity(mined) > mean_similarity(heuristic), (mix, dataset)
            assert all(normalized(e.negatives[0]) != normalized(e.positive) for e in mined)
