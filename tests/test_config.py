"""The run config: renamed keys still accepted (with a warning), base files, errors naming keys."""

from __future__ import annotations

import pytest
import yaml

from train.config import ConfigError, load_config


def _write(path, content: dict):
    path.write_text(yaml.safe_dump(content))
    return path


def test_the_old_name_of_a_renamed_key_is_accepted_with_a_warning(tmp_path):
    path = _write(tmp_path / "c.yaml", {"model": {"mode": "classical_instruct"}})
    with pytest.warns(FutureWarning, match="model.mode is deprecated, use model.template_set"):
        assert load_config(path).model.template_set == "classical_instruct"
    plain = _write(tmp_path / "plain.yaml", {})
    with pytest.warns(FutureWarning, match="override model.mode: deprecated, use model.template_set"):
        assert load_config(plain, ["model.mode=prompteol"]).model.template_set == "prompteol"
    both = _write(tmp_path / "both.yaml", {"model": {"mode": "echo", "template_set": "classical"}})
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match="both model.mode and model.template_set"):
        load_config(both)


def test_a_config_lays_its_keys_over_its_base_file(tmp_path):
    _write(tmp_path / "base.yaml", {"output_dir": "runs/a", "model": {"pooling": "last", "max_length": 64},
                                    "train": {"lr": 1e-3, "max_steps": 7}, "wandb": {"tags": ["x", "y"]}})
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub" / "child.yaml", {"base": "../base.yaml", "model": {"max_length": 32},
                                                     "wandb": {"tags": ["z"]}})
    config = load_config(child, ["train.lr=5e-4"])
    assert (config.model.pooling, config.model.max_length) == ("last", 32)  # merged key by key
    assert (config.train.lr, config.train.max_steps) == (5e-4, 7)  # overrides still win
    assert config.wandb.tags == ["z"] and str(config.output_dir) == "runs/a"  # lists are replaced, not merged


def test_a_base_file_that_includes_itself_is_named(tmp_path):
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"b.yaml: base: .*a.yaml includes itself"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        load_config(_write(tmp_path / "c.yaml", {"base": "missing.yaml"}))


def test_every_bad_key_is_named_together_including_lora_keys(tmp_path):
    path = _write(tmp_path / "c.yaml", {"lora": {"rank": 8, "r": 0}, "model": {"pooling": "max"}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "lora.rank: unknown key" in message and "lora.r:" in message and "model.pooling:" in message


@pytest.mark.parametrize("dims", ["[]", "[0,64]", "[64,64]"])
def test_matryoshka_dims_must_be_distinct_positive_widths(tmp_path, dims):
    path = _write(tmp_path / "c.yaml", {"data": {"mix": "default"}})
    with pytest.raises(ConfigError, match=r"train.matryoshka_dims: expected distinct positive widths"):
        load_config(path, [f"train.matryoshka_dims={dims}"])
    assert load_config(path, ["train.matryoshka_dims=[256,64,128]"]).train.matryoshka_dims == [256, 64, 128]
    assert load_config(path).train.matryoshka_dims is None
