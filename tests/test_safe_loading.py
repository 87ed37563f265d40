"""Nothing loaded can run code unless asked: weights load from safetensors only, the pickles of a
checkpoint are scanned before anything loads them, and a model's own code runs only with
``model.trust_remote_code``.

The pickles here are real attacks: unpickling one calls ``exec``, which writes a marker file
(the first test shows it does, through an unchecked ``torch.load``); every refusal must leave
no marker behind.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train.finetune as finetune
from echo_base import BadInputError
from models import EchoEncoder
from train.checkpoint import UnsafeCheckpointError, refuse_unsafe_pickles
from tests.tiny_models import tiny_run_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _WritesMarker:
    """Unpickled, it calls exec: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _save_payload(path: Path, marker: Path) -> Path:
    torch.save({"state": _WritesMarker(marker)}, path)  # torch's zip format, as accelerate and DeepSpeed write
    return path


def _copy_model(source: Path, target: Path, *, weights: bool) -> Path:
    shutil.copytree(source, target, ignore=None if weights else shutil.ignore_patterns("*.safetensors"))
    return target


def test_the_payload_runs_code_when_loaded_unchecked(tmp_path):
    marker = tmp_path / "marker"
    torch.load(_save_payload(tmp_path / "payload.bin", marker), weights_only=False)
    assert marker.read_text() == "code ran"


def test_a_model_folder_with_pickle_weights_only_is_refused_and_nothing_runs(tiny_model_dir, tmp_path, capsys):
    marker = tmp_path / "marker"
    folder = _copy_model(tiny_model_dir, tmp_path / "model", weights=False)
    _save_payload(folder / "pytorch_model.bin", marker)
    with pytest.raises(BadInputError, match=rf"^{folder / 'pytorch_model.bin'}: refused: weights load from safetensors"):
        EchoEncoder.from_pretrained(str(folder))

    config = tiny_run_config(tmp_path, folder)
    assert finetune.cli(["--config", str(config)]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    # The run checks the model before anything else, so its line names the key too.
    assert stderr.rstrip().splitlines()[-1].startswith(f"error: model.name: {folder / 'pytorch_model.bin'}: refused:")
    assert not marker.exists()


def test_beside_safetensors_weights_a_pickle_is_never_opened(tiny_model_dir, tmp_path):
    marker = tmp_path / "marker"
    folder = _copy_model(tiny_model_dir, tmp_path / "model", weights=True)
    _save_payload(folder / "pytorch_model.bin", marker)
    encoder = EchoEncoder.from_pretrained(str(folder), dtype="float32")
    reference = EchoEncoder.from_pretrained(str(tiny_model_dir), dtype="float32")
    np.testing.assert_array_equal(encoder.encode(["a fox"]), reference.encode(["a fox"]))
    assert not marker.exists()


def test_a_checkpoint_holding_a_code_running_pickle_is_refused_before_anything_loads(tiny_model_dir, tmp_path, capsys):
    config = tiny_run_config(tmp_path, tiny_model_dir, max_steps=2, save_every=1)
    run = tmp_path / "run"
    finetune.main(["--config", str(config), "export.enabled=false"])
    marker = tmp_path / "marker"
    optimizer_state = run / "checkpoints" / "step-2" / "accelerate" / "optimizer.bin"
    _save_payload(optimizer_state, marker)

    capsys.readouterr()
    assert finetune.cli(["--config", str(config), "train.max_steps=3"]) == 2  # resume=auto: from step-2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert stderr.rstrip().splitlines()[-1] == (
        f"error: {optimizer_state}: refused: loading it would call builtins.exec (a pickle that can run code); "
        "only tensors and plain data are loaded")
    assert not marker.exists()

    optimizer_state.write_bytes(pickle.dumps(_WritesMarker(marker)))  # the old non-zip format cannot be scanned
    with pytest.raises(UnsafeCheckpointError, match="not a zip-format torch file"):
        refuse_unsafe_pickles(optimizer_state.parent)
    assert not marker.exists()


def test_the_scan_lets_through_what_accelerate_and_deepspeed_store(tmp_path):
    """accelerate's RNG states (numpy arrays) and DeepSpeed's ZeRO optimizer states (three plain classes)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    torch.save({"numpy_random_seed": np.random.get_state(), "torch_manual_seed": torch.get_rng_state()},
               tmp_path / "random_states_0.pkl")
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
                "param_slice_mappings": [{"weight": fragment_address(numel=4, start=0)}],
                "single_partition_of_fp32_groups": [torch.zeros(4)]}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    refuse_unsafe_pickles(tmp_path)  # passes


def _remote_code_model(tiny_model_dir: Path, folder: Path, marker: Path) -> Path:
    """The tiny Llama as a model type transformers does not ship: its config and model classes live in the folder."""
    _copy_model(tiny_model_dir, folder, weights=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="echo-test-remote", auto_map={"AutoConfig": "configuration_remote.RemoteConfig",
                                                           "AutoModel": "modeling_remote.RemoteModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_remote.py").write_text(
        f"open({str(marker)!r}, 'w').write('code ran')\n"
        "from transformers import LlamaConfig\n\n\n"
        "class RemoteConfig(LlamaConfig):\n    model_type = 'echo-test-remote'\n")
    (folder / "modeling_remote.py").write_text(
        "from transformers import LlamaModel\n\nfrom .configuration_remote import RemoteConfig\n\n\n"
        "class RemoteModel(LlamaModel):\n    config_class = RemoteConfig\n")
    return folder


def test_a_models_own_code_runs_only_when_the_config_opts_in(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import transformers.dynamic_module_utils as dynamic_modules

    # transformers copies a model's code into its modules cache and puts that on sys.path: both stay in the test.
    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    marker = tmp_path / "marker"
    folder = _remote_code_model(tiny_model_dir, tmp_path / "remote-model", marker)
    config = tiny_run_config(tmp_path, folder, max_steps=1)

    assert finetune.cli(["--config", str(config)]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert stderr.rstrip().splitlines()[-1].startswith(
        f"error: model.name: {folder / 'config.json'}: refused: loading this model runs its own code")
    assert not marker.exists()

    export = finetune.main(["--config", str(config), "model.trust_remote_code=true"])
    assert marker.read_text() == "code ran"
    assert json.loads((export / "config.json").read_text())["model_type"] == "echo-test-remote"
