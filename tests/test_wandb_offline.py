"""wandb for real: a short training run logged offline, read back from the run's own .wandb file.

Everything wandb recorded is checked against the run's log.jsonl and config.yaml, and the
model artifact against the export folder's files (checksums computed here).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import wandb
import yaml
from wandb.proto import wandb_internal_pb2

import train.finetune as finetune
from data.formats import write_task
from evaluation.report import plot_training
from tests.tiny_models import write_tiny_dataset

BLOCK_SIZE = 32 * 1024
FILE_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)  # identifier, magic, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a run's .wandb file, parsed with wandb's own protobuf schema.

    wandb-core writes a LevelDB-style log: the file header, then 32 KiB blocks of chunks, each
    a 7-byte header (CRC-32C, payload length, chunk type) and its payload. A record that does
    not fit its block continues in the next (FIRST, MIDDLE..., LAST); a block tail shorter
    than a chunk header is padding. (The CRCs are not checked: the stdlib has no CRC-32C.)
    """
    data = path.read_bytes()
    assert data[:len(FILE_HEADER)] == FILE_HEADER
    records, payload, position = [], b"", len(FILE_HEADER)
    while position + 7 <= len(data):
        if BLOCK_SIZE - position % BLOCK_SIZE < 7:
            position += BLOCK_SIZE - position % BLOCK_SIZE
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        assert kind in (FULL, FIRST, MIDDLE, LAST), f"chunk type {kind} at byte {position}"
        payload += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (FULL, LAST):
            records.append(wandb_internal_pb2.Record.FromString(payload))
            payload = b""
    assert position == len(data) and not payload
    return records


def _items(updates) -> dict:
    """{key: value} of wandb's history items or summary updates (keys with '/' are one nested_key)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


def _md5_base64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_offline_run_logs_config_history_summary_group_and_a_model_reference(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # tests/conftest.py disables wandb unless told otherwise
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb_home = tmp_path / "wandb-home"  # wandb's own folders: none of the user's, and checked for copies below
    for variable in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(variable, str(wandb_home / variable.lower()))
    write_tiny_dataset(tmp_path / "a.jsonl", 24, seed=1)
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()][:6]
    write_task(tmp_path / "dev", {"name": "dev", "type": "retrieval", "instruction": "Find the matching text",
                                  "symmetric": False, "source": "test", "license": "CC0", "description": "six rows"},
               {"queries.jsonl": [{"id": f"q{i}", "text": row["query"]} for i, row in enumerate(rows)],
                "corpus.jsonl": [{"id": f"d{i}", "text": row["positive"]} for i, row in enumerate(rows)],
                "qrels.jsonl": [{"query_id": f"q{i}", "doc_id": f"d{i}", "relevance": 1} for i in range(len(rows))]})
    run = tmp_path / "run"
    config = {
        "output_dir": str(run),
        "model": {"name": str(tiny_model_dir), "max_length": 48, "precision": "fp32"},
        "lora": {"r": 4, "alpha": 8},
        "data": {"mix": None, "dev": str(tmp_path / "dev"), "datasets": [{"name": "a", "path": str(tmp_path / "a.jsonl")}]},
        # Dev metrics before step 1, at step 2 and at the end; throughput at steps 2 and 3 only.
        "train": {"max_steps": 3, "batch_size": 4, "lr": 5e-3, "warmup_steps": 1, "eval_every": 2, "log_every": 2},
        "wandb": {"mode": "offline", "log_model": True, "project": "echo-test", "group": "tiny-group", "name": "tiny-run"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    export = finetune.main(["--config", str(tmp_path / "config.yaml")])
    wandb.teardown()  # the run is finished, but wandb's service may still be writing the file: wait for it

    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (wandb_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(wandb_file)
    assert records[-1].WhichOneof("record_type") == "exit"  # the whole run is in the file
    by_type: dict[str, list] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        by_type.setdefault(kind, []).append(getattr(record, kind))

    (run_record,) = by_type["run"]
    assert (run_record.project, run_record.run_group, run_record.display_name) == ("echo-test", "tiny-group", "tiny-run")
    logged_config = {key: value for key, value in _items(run_record.config.update).items() if key != "_wandb"}
    assert logged_config == yaml.safe_load((run / "config.yaml").read_text())  # the whole resolved config
    assert logged_config["train"]["max_steps"] == 3

    # wandb merges what is logged at one step into one history row: so does the reference.
    expected_rows: dict[int, dict] = {}
    for record in log:
        expected_rows.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k != "step"})
    history = {}
    for row in by_type["history"]:
        items = _items(row.item)
        history[items["_step"]] = {key: value for key, value in items.items() if not key.startswith("_")}
    assert history == expected_rows
    assert sorted(history) == [0, 1, 2, 3]
    assert all({"train/loss", "train/lr"} <= set(history[step]) for step in (1, 2, 3))
    throughput = {"train/tokens_per_s", "train/examples_per_s", "train/peak_memory_gb"}
    assert [step for step in history if throughput <= set(history[step])] == [2, 3]
    assert [step for step in history if "dev/ndcg@10" in history[step]] == [0, 2, 3]

    summary: dict = {}
    for update in by_type["summary"]:
        summary.update(_items(update.update))
    expected_summary: dict = {}
    for record in log:
        expected_summary.update({k: v for k, v in record.items() if k != "step"})
    assert {key: value for key, value in summary.items() if not key.startswith("_")} == expected_summary

    (artifact,) = by_type["artifact"]
    assert (artifact.type, artifact.name) == ("model", f"model-{run_record.run_id}")
    files = sorted(path for path in export.rglob("*") if path.is_file())
    assert any(path.suffix == ".safetensors" for path in files)
    # A reference: every entry points at its file in the export and carries its checksum.
    assert {entry.path: (entry.ref, entry.digest, entry.size) for entry in artifact.manifest.contents} == {
        str(path.relative_to(export)): (path.resolve().as_uri(), _md5_base64(path), path.stat().st_size) for path in files}
    # ... and no copy of the weights anywhere wandb writes.
    weights = {_md5_base64(path) for path in files if path.suffix == ".safetensors"}
    written = [path for folder in (run / "wandb", wandb_home) for path in folder.rglob("*") if path.is_file()]
    assert written and not weights & {_md5_base64(path) for path in written}

    # training.png is the picture of this log.
    png = (run / "training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    figure = plot_training(log, tmp_path / "redrawn.png")
    assert [axes.get_ylabel() for axes in figure.axes] == ["loss", "learning rate", "gradient norm (before clipping)",
                                                            "dev score"]
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == tuple(round(size * 120) for size in figure.get_size_inches())
