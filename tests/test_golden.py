"""Golden values: the first steps of a tiny real training run equal an independent plain-PyTorch
implementation of the same recipe, kept in this file.

The run is `train.finetune.main` in-process (tiny random Llama, one small JSONL dataset, fp32,
LoRA without dropout, GradCache with uneven chunks, an epoch boundary at step 3). The
reference shares with the project only what has its own tests or is a dependency:
`EchoEncoder.tokenize` (tests/test_tokenization.py), transformers' Llama and peft's LoRA.
Everything else it writes out here: the batch order from the sampler's documented rule,
padding, mean pooling over the pooled mask, InfoNCE with duplicate masking, the linear
warm-up/decay schedule, gradient clipping and the AdamW step. Losses, gradient norms and
the final adapter weights must agree to float32 rounding.

The reference's own numbers are kept as literals (GOLDEN_LOSSES), so a change that moved
the project and this reference together (a dependency upgrade, an edit to both) still fails.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModel, set_seed

import train.finetune as finetune
from models import EchoEncoder
from tests.tiny_models import WORDS

SEED = 11
ROWS = 10  # with BATCH_SIZE 4: two batches per epoch (two rows dropped), so step 3 opens epoch 1
BATCH_SIZE = 4
CHUNK_SIZE = 3  # 4 queries -> chunks of 3 + 1; 8 documents -> 3 + 3 + 2
STEPS = 3
WARMUP_STEPS = 1  # transformers' linear warm-up gives the first update lr 0, then lr, then lr / 2
LR = 2e-2
WEIGHT_DECAY = 0.01
TEMPERATURE = 0.05
MAX_GRAD_NORM = 1.0  # the config default; the gradient norms below exceed it, so clipping acts
MAX_LENGTH = 48
LORA_R, LORA_ALPHA = 4, 8
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TEMPLATE_SET = "echo_instruct"  # the config's default
INSTRUCTION = "Find the matching text"

# Computed once, on CPU (torch 2.13.0+cpu, transformers 5.23.0, peft 0.21.2), by the reference below:
#   reference_run(save_tiny_llama(folder, build_bpe_tokenizer()), golden_rows())["losses"]
# (the tiny model of conftest's tiny_model_dir). They depend on that model, the rows and every
# setting above; the project's run matched them to 6e-8.
GOLDEN_LOSSES = [2.9594500, 3.5929730, 0.3692625]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def golden_rows() -> list[dict]:
    """Training rows whose texts repeat across rows, so the duplicate mask has work to do.

    Row i's hard negative is row i+1's positive, and rows 3 and 7 share one positive.
    """
    rng = random.Random(5)
    queries = [" ".join(rng.choices(WORDS, k=4)) for _ in range(ROWS)]
    positives = [query + " " + rng.choice(WORDS) for query in queries]
    positives[7] = positives[3]
    return [{"query": queries[i], "positive": positives[i], "negatives": [positives[(i + 1) % ROWS]],
             "instruction": INSTRUCTION} for i in range(ROWS)]


# -- the reference ---------------------------------------------------------------------------
def reference_batches(num_rows: int, batch_size: int, seed: int):
    """Row indices per step, from data/sampler.py's documented rule for one dataset: epoch e
    draws from random.Random(seed + e), shuffles the rows, cuts full batches (dropping the
    tail), then shuffles the batches."""
    epoch = 0
    while True:
        rng = random.Random(seed + epoch)
        rows = list(range(num_rows))
        rng.shuffle(rows)
        full = num_rows - num_rows % batch_size
        batches = [rows[start : start + batch_size] for start in range(0, full, batch_size)]
        rng.shuffle(batches)
        yield from batches
        epoch += 1


def reference_embeddings(model: torch.nn.Module, prompts, pad_id: int) -> torch.Tensor:
    """One right-padded forward of the base model; the mean of the hidden states over each pooled mask."""
    width = max(len(prompt.input_ids) for prompt in prompts)
    input_ids = torch.tensor([list(p.input_ids) + [pad_id] * (width - len(p.input_ids)) for p in prompts])
    attention_mask = torch.tensor([[1] * len(p.input_ids) + [0] * (width - len(p.input_ids)) for p in prompts])
    pooled = torch.tensor([list(p.pooled_mask) + [0] * (width - len(p.pooled_mask)) for p in prompts])
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return torch.stack([hidden[row][pooled[row].bool()].mean(dim=0) for row in range(len(prompts))])


def reference_info_nce(queries: torch.Tensor, documents: torch.Tensor, document_texts: list[str]) -> tuple[torch.Tensor, int]:
    """InfoNCE written out: query i against every document of the batch, its positive at row
    i * (documents per query); a document with the positive's text (other than the positive
    itself) is no negative and is left out. Returns the mean loss and how many were left out."""
    per_query = documents.shape[0] // queries.shape[0]
    cosine = (queries / queries.norm(dim=-1, keepdim=True)) @ (documents / documents.norm(dim=-1, keepdim=True)).T
    losses, left_out = [], 0
    for i in range(queries.shape[0]):
        positive = i * per_query
        kept = [j for j in range(documents.shape[0])
                if j == positive or document_texts[j] != document_texts[positive]]
        left_out += documents.shape[0] - len(kept)
        logits = cosine[i, kept] / TEMPERATURE
        losses.append(torch.logsumexp(logits, dim=0) - cosine[i, positive] / TEMPERATURE)
    return torch.stack(losses).mean(), left_out


def linear_schedule(steps_done: int) -> float:
    """The learning-rate factor of transformers' "linear" schedule after `steps_done` optimizer steps."""
    if steps_done < WARMUP_STEPS:
        return steps_done / max(1, WARMUP_STEPS)
    return max(0.0, (STEPS - steps_done) / max(1, STEPS - WARMUP_STEPS))


def reference_run(model_dir: Path, rows: list[dict]) -> dict:
    """The recipe in plain PyTorch: per step, its loss, gradient norm (before clipping) and
    the number of masked duplicates; at the end, the LoRA weights by name."""
    tokenizer_only = EchoEncoder.from_pretrained(str(model_dir), mode=TEMPLATE_SET, pooling="mean",
                                                 max_length=MAX_LENGTH, dtype="float32")
    pad_id = tokenizer_only.tokenizer.pad_token_id
    # The seeding order of train/finetune.py: seed, then load the base model, then add LoRA
    # (whose A matrices are drawn from torch's generator).
    set_seed(SEED)
    base = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                            target_modules=LORA_TARGETS, bias="none"))
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=LR, weight_decay=WEIGHT_DECAY)
    batches = reference_batches(len(rows), BATCH_SIZE, SEED)
    losses, grad_norms, left_out = [], [], []
    for step in range(STEPS):
        batch = [rows[i] for i in next(batches)]
        query_texts = [row["query"] for row in batch]
        document_texts = [text for row in batch for text in (row["positive"], *row["negatives"])]
        prompts = (tokenizer_only.tokenize(query_texts, "query", INSTRUCTION)
                   + tokenizer_only.tokenize(document_texts, "document"))
        embeddings = reference_embeddings(model, prompts, pad_id)
        loss, masked = reference_info_nce(embeddings[: len(batch)], embeddings[len(batch) :], document_texts)
        optimizer.zero_grad()
        loss.backward()
        norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in parameters)).item()
        scale = min(1.0, MAX_GRAD_NORM / (norm + 1e-6))
        for p in parameters:
            p.grad.mul_(scale)
        for group in optimizer.param_groups:
            group["lr"] = LR * linear_schedule(step)
        optimizer.step()
        losses.append(loss.item())
        grad_norms.append(norm)
        left_out.append(masked)
    lora = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return {"losses": losses, "grad_norms": grad_norms, "left_out": left_out, "lora": lora}


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return reference_run(tiny_model_dir, golden_rows())


# -- the project ---------------------------------------------------------------------------
def project_run(tmp_path: Path, model_dir: Path) -> Path:
    data = tmp_path / "golden.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in golden_rows()))
    config = {
        "output_dir": str(tmp_path / "run"),
        "model": {"name": str(model_dir), "template_set": TEMPLATE_SET, "max_length": MAX_LENGTH, "precision": "fp32",
                  "pooling": "mean"},
        "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0},
        "data": {"mix": None, "dev": None, "datasets": [{"name": "golden", "path": str(data)}]},
        "train": {"max_steps": STEPS, "batch_size": BATCH_SIZE, "chunk_size": CHUNK_SIZE, "lr": LR,
                  "warmup_steps": WARMUP_STEPS, "weight_decay": WEIGHT_DECAY, "temperature": TEMPERATURE,
                  "seed": SEED},
        "export": {"enabled": False},
        "wandb": {"mode": "disabled"},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    finetune.main(["--config", str(tmp_path / "config.yaml")])
    return tmp_path / "run"


def logged(run_dir: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    by_step = {record["step"]: record[key] for record in records if key in record}
    return [by_step[step] for step in range(1, STEPS + 1)]


def test_the_reference_exercises_what_it_claims(reference):
    """Duplicates are masked, clipping acts and the adapters move: the comparison below covers them."""
    assert sum(reference["left_out"]) > 0
    assert max(reference["grad_norms"]) > MAX_GRAD_NORM
    # peft starts every B at zero; after the steps every B has moved.
    assert all(weight.abs().max() > 0 for name, weight in reference["lora"].items() if "lora_B" in name)


def test_the_reference_reproduces_its_golden_values(reference):
    assert reference["losses"] == pytest.approx(GOLDEN_LOSSES, abs=1e-4)


def test_first_steps_of_a_training_run_equal_the_reference(reference, tmp_path, tiny_model_dir):
    run_dir = project_run(tmp_path, tiny_model_dir)
    # float32 throughout; the two sides differ in padding widths and chunking (other matmul
    # shapes), i.e. in rounding only: about 1e-7 relative, well inside 1e-5.
    assert logged(run_dir, "train/loss") == pytest.approx(reference["losses"], abs=1e-5)
    assert logged(run_dir, "train/grad_norm") == pytest.approx(reference["grad_norms"], rel=1e-5)
    adapter = load_file(run_dir / "checkpoints" / f"step-{STEPS}" / "adapter.safetensors")
    assert adapter.keys() == reference["lora"].keys()
    for name, expected in reference["lora"].items():
        torch.testing.assert_close(adapter[name], expected, atol=1e-5, rtol=0, msg=lambda m: f"{name}: {m}")
