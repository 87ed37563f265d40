"""Pooled spans are exact by construction, and truncation keeps echo's copies identical."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from models.registry import resolve_model
from models.templates import BUILTIN_TEMPLATE_SETS, Template, TemplateSet, get_template_set, template_set_from_dict
from models.tokenization import PromptTokenizer
from tests.tiny_models import build_bpe_tokenizer, build_sentencepiece_tokenizer

TEXTS = ["hello world, where do birds fly?", "The quick brown fox jumps over the lazy dog.", "a"]


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def _tokenizers(smollm2_tokenizer):
    return {"smollm2": smollm2_tokenizer, "bpe": build_bpe_tokenizer(), "sentencepiece": build_sentencepiece_tokenizer()}


def _pooled(prompt):
    return [token for token, pooled in zip(prompt.input_ids, prompt.pooled_mask) if pooled]


def _text_ids(tokenizer, text):
    """The text as the pooled copy must hold it: tokenized alone, as a word after a space."""
    alone = tokenizer(text, add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    return alone if alone == spaced else spaced  # SentencePiece marks the boundary itself


@pytest.mark.parametrize("mode", ["echo", "classical", "echo_instruct", "echo_rewrite_instruct", "classical_instruct"])
@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize("append_eos", [False, True])
def test_pooled_span_is_exactly_the_text(smollm2_tokenizer, mode, kind, append_eos):
    for name, tokenizer in _tokenizers(smollm2_tokenizer).items():
        prompt_tokenizer = PromptTokenizer(tokenizer, get_template_set(mode), append_eos=append_eos, max_length=None)
        for text, prompt in zip(TEXTS, prompt_tokenizer(TEXTS, kind, instruction="Find the answer")):
            expected = _text_ids(tokenizer, text) + ([tokenizer.eos_token_id] if append_eos else [])
            assert _pooled(prompt) == expected, (name, mode, text)
            # The pooled span is one contiguous block at the end of the prompt.
            first = prompt.pooled_mask.index(1)
            assert all(prompt.pooled_mask[first:]) and len(prompt) - first == len(expected)


def test_echo_has_two_identical_copies_and_decodes_to_the_prompt(smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, get_template_set("echo"), append_eos=False, max_length=None)
    text = TEXTS[1]
    prompt = prompt_tokenizer([text], "document")[0]
    assert smollm2_tokenizer.decode(list(prompt.input_ids)) == get_template_set("echo").document.render(text)
    copy = _text_ids(smollm2_tokenizer, text)
    ids = list(prompt.input_ids)
    starts = [i for i in range(len(ids)) if ids[i : i + len(copy)] == copy]
    assert len(starts) == 2 and prompt.pooled_mask[starts[0]] == 0 and prompt.pooled_mask[starts[1]] == 1


def test_bos_is_added_exactly_as_the_tokenizer_adds_it(smollm2_tokenizer):
    sentencepiece = build_sentencepiece_tokenizer()
    prompt = PromptTokenizer(sentencepiece, get_template_set("echo"), append_eos=False, max_length=None)(["hi"], "query")[0]
    assert prompt.input_ids[0] == sentencepiece.bos_token_id and prompt.pooled_mask[0] == 0
    prompt = PromptTokenizer(smollm2_tokenizer, get_template_set("echo"), append_eos=False, max_length=None)(["hi"], "query")[0]
    assert smollm2_tokenizer.bos_token_id not in prompt.input_ids  # SmolLM2's tokenizer adds no BOS


@pytest.mark.parametrize(
    ("mode", "max_length"),
    [(mode, length) for mode in ("echo", "echo_instruct") for length in (48, 61, 80)]
    + [("echo_rewrite_instruct", length) for length in (61, 80, 96)],  # a longer template: 48 leaves no text
)
def test_truncation_keeps_the_copies_identical_and_within_budget(smollm2_tokenizer, mode, max_length):
    long_text = " ".join(["the river runs past the old mill and under the stone bridge"] * 10)
    for tokenizer in _tokenizers(smollm2_tokenizer).values():
        prompt_tokenizer = PromptTokenizer(tokenizer, get_template_set(mode), append_eos=True, max_length=max_length)
        untruncated = PromptTokenizer(tokenizer, get_template_set(mode), append_eos=True, max_length=None)
        prompt = prompt_tokenizer([long_text], "query", "Find it")[0]
        assert len(prompt) <= max_length
        text_tokens = _pooled(prompt)[:-1]  # without EOS
        # The pooled copy is a prefix of the full text, and the unpooled copy holds the same ids.
        assert text_tokens == _text_ids(tokenizer, long_text)[: len(text_tokens)] and text_tokens
        ids = list(prompt.input_ids)
        assert any(ids[i : i + len(text_tokens)] == text_tokens for i in range(prompt.pooled_mask.index(1)))
        # The template itself is never cut: only the text shrinks.
        full = untruncated([long_text], "query", "Find it")[0]
        assert len(full) - len(prompt) == 2 * (len(_text_ids(tokenizer, long_text)) - len(text_tokens))


def test_too_small_max_length_and_missing_instruction_raise(smollm2_tokenizer):
    with pytest.raises(ValueError, match="leaves no room"):
        PromptTokenizer(smollm2_tokenizer, get_template_set("echo"), append_eos=False, max_length=9)(["hi"], "query")
    no_default = get_template_set("echo_instruct").__class__(
        "custom", Template.parse("Instruct: {instruction}\nQuery: {pooled_text}"), Template.parse("{pooled_text}")
    )
    with pytest.raises(ValueError, match="needs an instruction"):
        PromptTokenizer(smollm2_tokenizer, no_default, append_eos=False, max_length=None)(["hi"], "query")


def test_template_parsing_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="exactly once"):
        Template.parse("Query: {text}")
    with pytest.raises(ValueError, match="unknown placeholder"):
        Template.parse("Query: {txt} {pooled_text}")
    template_file = tmp_path / "templates.yaml"
    template_file.write_text("mine:\n  query: 'Q: {pooled_text}'\n  documnt: 'D: {pooled_text}'\n")
    with pytest.raises(ValueError, match=r"templates.yaml: template set 'mine': unknown key"):
        get_template_set("mine", template_file)
    template_file.write_text("mine:\n  query: 'Q: {text} again {pooled_text}'\n  document: 'D: {pooled_text}'\n")
    assert get_template_set("mine", template_file).query.text_copies == 2
    with pytest.raises(ValueError, match="unknown template set 'nope'"):
        get_template_set("nope")


def test_builtin_sets_use_the_papers_wording():
    assert BUILTIN_TEMPLATE_SETS["echo"].query.render("S") == "Rewrite the following paragraph: S. The rewritten paragraph: S"
    assert BUILTIN_TEMPLATE_SETS["classical"].query.render("S") == "Write a paragraph: S"
    assert BUILTIN_TEMPLATE_SETS["echo_instruct"].query.render("S", "I") == "Instruct: I\nQuery: S\nQuery again: S"
    assert BUILTIN_TEMPLATE_SETS["echo_instruct"].document.render("S") == "Document: S\nDocument again: S"
    assert BUILTIN_TEMPLATE_SETS["classical_instruct"].document.render("S") == "Document: S"


LONG_TEXT = " ".join(["the river runs past the old mill and under the stone bridge"] * 12)


@pytest.mark.parametrize("max_length", [None, 64, 128])
@pytest.mark.parametrize("kind", ["query", "document"])
def test_compute_matched_echo_costs_what_classical_costs_and_pools_the_first_half_exactly(
        smollm2_tokenizer, max_length, kind):
    texts = [*TEXTS, "the quick brown fox jumps over the lazy dog near the river bank at dawn", LONG_TEXT]
    for name, tokenizer in _tokenizers(smollm2_tokenizer).items():
        def prompts(template_set):
            tokenize = PromptTokenizer(tokenizer, get_template_set(template_set), append_eos=True, max_length=max_length)
            return tokenize(texts, kind, "Find it")

        matched, echo, classical = (prompts("echo_instruct_compute_matched"), prompts("echo_instruct"),
                                    prompts("classical_instruct"))
        # The templates' own tokens (BOS, literals, instruction, EOS): a prompt's length less its text copies.
        echo_fixed = len(echo[0]) - 2 * (len(_pooled(echo[0])) - 1)
        classical_fixed = len(classical[0]) - (len(_pooled(classical[0])) - 1)
        for text, matched_prompt, echo_prompt, classical_prompt in zip(texts, matched, echo, classical):
            text_ids = _text_ids(tokenizer, text)
            copy = -(-len(text_ids) // 2)  # ceil(n / 2)
            if max_length is not None:
                copy = min(copy, (max_length - echo_fixed) // 2)
            # The pooled span is exactly the first ceil(n/2) text tokens (within the cap) plus EOS, at the end,
            # and the unpooled copy holds the same ids.
            assert _pooled(matched_prompt) == text_ids[:copy] + [tokenizer.eos_token_id], (name, text)
            first = matched_prompt.pooled_mask.index(1)
            assert all(matched_prompt.pooled_mask[first:])
            ids = list(matched_prompt.input_ids)
            assert any(ids[i : i + copy] == text_ids[:copy] for i in range(first - copy + 1))
            assert len(matched_prompt) == echo_fixed + 2 * copy
            # Compute-matched: about classical's length (the templates' difference and one token of rounding
            # apart); full echo holds every text token twice.
            difference = echo_fixed - classical_fixed  # "\nQuery again:" and the like; a few tokens for SmolLM2
            assert 0 < difference and (difference <= 6 or name != "smollm2"), name
            gap = len(matched_prompt) - len(classical_prompt)
            if max_length is None:
                assert gap == difference + len(text_ids) % 2, (name, text)
                assert len(echo_prompt) - len(classical_prompt) == difference + len(text_ids)
            else:  # a capped text fills both prompts up to the cap (less one token of rounding for echo's two copies)
                assert -1 <= gap <= difference + 1, (name, text, max_length)
                assert len(matched_prompt) <= max_length and len(classical_prompt) <= max_length


def test_compute_matched_is_recorded_with_the_template_set_and_read_back(tmp_path):
    matched = get_template_set("echo_compute_matched")
    assert matched.compute_matched and not get_template_set("echo").compute_matched
    assert (matched.query, matched.document) == (get_template_set("echo").query, get_template_set("echo").document)
    assert template_set_from_dict("copy", matched.to_dict()) == TemplateSet("copy", matched.query, matched.document,
                                                                            compute_matched=True)
    template_file = tmp_path / "templates.yaml"
    template_file.write_text("mine:\n  query: 'Q: {text} Q: {pooled_text}'\n  document: 'D: {pooled_text}'\n"
                             "  compute_matched: yes please\n")
    with pytest.raises(ValueError, match="'compute_matched' must be true or false"):
        get_template_set("mine", template_file)
