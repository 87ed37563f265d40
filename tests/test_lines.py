"""echo_base.lines: real-world text files read alike everywhere, errors naming file and line."""

from __future__ import annotations

import pytest

from echo_base import BadInputError, DataFormatError, iter_jsonl, iter_lines, read_yaml_mapping


def test_a_bom_crlf_ends_and_a_missing_last_newline_are_read_as_plain_lines(tmp_path):
    path = tmp_path / "t.txt"
    # A form feed and U+2028 inside a line do not end it; only \n does.
    path.write_bytes(b"\xef\xbb\xbf" + "first\r\nsecond\x0cstill second\u2028\nlast".encode())
    assert list(iter_lines(path)) == [(1, "first"), (2, "second\x0cstill second\u2028"), (3, "last")]


def test_invalid_utf8_names_its_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"ok\nalso ok\nbad \xff byte\n")
    with pytest.raises(DataFormatError, match=r"t\.txt:3: not valid UTF-8"):
        list(iter_lines(path))


def test_a_missing_file_and_a_folder_are_named(tmp_path):
    with pytest.raises(BadInputError, match=r"nope\.jsonl: no such file"):
        list(iter_jsonl(tmp_path / "nope.jsonl"))
    with pytest.raises(BadInputError, match=r": is a folder, not a file"):
        list(iter_jsonl(tmp_path))


def test_jsonl_rows_skip_blank_lines_and_name_bad_ones(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\n  \n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataFormatError, match=r"r\.jsonl:2: row must be a JSON object, got list"):
        list(iter_jsonl(path))
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataFormatError, match=r"r\.jsonl:2: invalid JSON"):
        list(iter_jsonl(path))


def test_yaml_mappings_are_read_or_named_with_the_callers_error(tmp_path):
    class SweepError(BadInputError):
        pass

    path = tmp_path / "s.yaml"
    path.write_text("a: 1\nb: [x, y]\n")
    assert read_yaml_mapping(path, "sweep file", SweepError) == {"a": 1, "b": ["x", "y"]}
    path.write_text("")
    assert read_yaml_mapping(path, "config") == {}
    path.write_text("- just\n- a list\n")
    with pytest.raises(SweepError, match=r"s\.yaml: a sweep file is a mapping, got list"):
        read_yaml_mapping(path, "sweep file", SweepError)
    path.write_text("a: 1\nb: [unclosed\nc: 2\n")
    with pytest.raises(SweepError, match=r"s\.yaml:3: not valid YAML \(expected ',' or ']', but got"):
        read_yaml_mapping(path, "sweep file", SweepError)
    with pytest.raises(BadInputError, match=r"missing\.yaml: cannot read config \(No such file or directory\)"):
        read_yaml_mapping(tmp_path / "missing.yaml", "config")


def test_a_key_given_twice_is_named_by_line_in_json_rows_and_yaml(tmp_path):
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"a": 1, "b": 2}\n{"a": 1, "b": 2, "a": 3}\n')
    with pytest.raises(DataFormatError, match=r"r\.jsonl:2: key 'a' given twice"):
        list(iter_jsonl(rows))
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 1\n  seed: 2\n  lr: 3\nmodel: {}\n")
    with pytest.raises(BadInputError, match=r"c\.yaml:4: key 'lr' given twice"):
        read_yaml_mapping(config, "config")
    # The same key in two mappings, and a `<<:` merge, are not duplicates.
    config.write_text("base: &b {lr: 1}\ntrain:\n  <<: *b\n  lr: 2\nmodel: {lr: 3}\n")
    assert read_yaml_mapping(config, "config")["train"] == {"lr": 2}


def test_yaml_bom_crlf_bad_utf8_and_a_folder(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbftrain:\r\n  lr: 1\r\n")
    assert read_yaml_mapping(path, "config") == {"train": {"lr": 1}}
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(BadInputError, match=r"c\.yaml:2: not valid UTF-8"):
        read_yaml_mapping(path, "config")
    with pytest.raises(BadInputError, match=r": is a folder, not a config"):
        read_yaml_mapping(tmp_path, "config")
