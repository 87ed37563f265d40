"""Kill -9 anywhere: a training run killed at any moment resumes to the weights it would have had.

    python -m train.launchers.fault_injection [--processes 1 2] [--trials 20] [--write-kills 8] [--seed 0] [--work DIR]

For each process count (1: ``python train/finetune.py``; 2: ``launch.sh --cpu --nproc 2
--zero 2``, DeepSpeed ZeRO-2 on CPU over gloo) it trains a tiny random Llama
(``tests/tiny_models.py``; so it runs from a source checkout) for :data:`STEPS` steps with a
checkpoint every :data:`SAVE_EVERY`, first uninterrupted (the reference), then once per trial:
start the run, SIGKILL every process of it, check what the kill left on disk, resume with
``train.resume=auto`` until it completes, and compare its merged export with the reference's.

Two kinds of kill, each drawn from a seeded RNG:

* **anywhere**: at a moment uniform over the reference run's span from its first write (the
  run's ``output_dir`` appearing) to its exit, measured from the trial run's own first write:
  model build, every training step, every checkpoint, the export and the teardown. Before its
  first write a run has nothing to lose, so no draw is spent there; a draw that falls after
  the trial run's exit (runs take longer or shorter on a busy machine) is drawn again.
* **during a checkpoint write**: the harness polls (every 0.5 ms) for the hidden staging
  folder of a chosen write (``checkpoints/.step-N.*`` of a chosen step, or ``.export.*``;
  :func:`echo_base.staging_path` names them), waits a random 0 to :data:`WRITE_KILL_DELAY_S`
  more, and kills. No hook in the training code: the evidence is the folder on disk, and a
  kill counts as during a write only when that staging folder is still there after the kill
  (a write that finished first is a miss; the trial is drawn again).

"Every process" is the launcher's process group and each descendant's own group: torchrun
starts every worker in a session of its own, so killing the launcher's group alone would
leave the workers running; processes that escape the snapshot are found by a marker in
their environment and killed too.

After each kill, every published checkpoint (``checkpoints/step-N``) and a published
export must equal the reference's at that step: the same files, ``.safetensors`` tensors
within :data:`TOLERANCE`, every other file byte-identical (once the run folder's path, which
configs and model cards record, reads as the reference's). Anything else (a folder under its
final name that is incomplete or unloadable) is data lost, and so is a missing checkpoint or
export once the run has completed. Prints one line per trial, then the summary table; exits 1 when any trial did
not finish, lost data or ended with weights further than :data:`TOLERANCE` from the reference.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import yaml
from safetensors.torch import load_file

# The tests' tiny random Llama and free-port finder: this tool runs from a source checkout.
from tests.distributed import free_port
from tests.tiny_models import build_bpe_tokenizer, save_tiny_llama, write_tiny_dataset
from train.checkpoint import CHECKPOINTS

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
SAVE_EVERY = 2
TOLERANCE = 1e-6  # max |Δ| of a merged weight against the reference; in practice the runs are bit-identical
WRITE_KILL_DELAY_S = 0.01  # a 1-process checkpoint write of the tiny model takes 15 to 40 ms
RUN_TIMEOUT_S = 600
MARKER = "ECHO_FAULT_INJECTION_RUN"  # environment variable naming the run a process belongs to
RANDOM, DURING_WRITE = "kill -9 anywhere", "kill -9 during a checkpoint write"


@dataclass
class Timeline:
    """When an uninterrupted run wrote first (its output_dir appeared) and when it exited, in seconds after launch."""

    first_write_s: float
    exit_s: float


@dataclass
class Trial:
    """One kill and what followed it."""

    processes: int
    fault: str  # RANDOM or DURING_WRITE
    index: int
    kill_s: float = 0.0  # seconds after launch
    misses: int = 0  # draws before it that did not land: the run (or the targeted write) finished first
    write_hit: str = ""  # the staging folder the kill left behind ("" = none)
    complete_at_kill: list[str] = field(default_factory=list)  # published checkpoints (and export) after the kill
    finished: bool = False
    data_lost: list[str] = field(default_factory=list)
    max_delta: float = float("nan")  # merged export against the reference's

    def line(self) -> str:
        return (f"{self.processes}p {'random' if self.fault == RANDOM else 'write '} #{self.index:02d}: "
                f"killed at {self.kill_s:6.2f} s, in write: {self.write_hit or '-':22s} "
                f"complete then: {','.join(self.complete_at_kill) or '-':29s} missed draws: {self.misses}  "
                f"finished: {'yes' if self.finished else 'NO'}  "
                f"data lost: {len(self.data_lost)}  max |Δ|: {self.max_delta:.1e}"
                + (f"  ({'; '.join(self.data_lost)})" if self.data_lost else ""))


def write_run_config(folder: Path) -> Path:
    """A tiny random Llama, two small datasets, and a config training it for STEPS steps; returns the config."""
    model = save_tiny_llama(folder / "model", build_bpe_tokenizer())
    write_tiny_dataset(folder / "a.jsonl", 24, seed=1)
    write_tiny_dataset(folder / "b.jsonl", 24, seed=2)
    config = {
        "model": {"name": str(model), "max_length": 48, "precision": "fp32"},
        # Dropout on: a resume must restore every process's RNG too.
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"mix": None, "dev": None, "datasets": [{"name": "a", "path": str(folder / "a.jsonl")},
                                                        {"name": "b", "path": str(folder / "b.jsonl")}]},
        "train": {"max_steps": STEPS, "save_every": SAVE_EVERY, "batch_size": 4, "chunk_size": 3, "lr": 5e-3,
                  "warmup_steps": 1},
        "wandb": {"mode": "disabled"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_command(processes: int, config: Path, output_dir: Path) -> list[str]:
    """The command a user would type: one process directly, two through launch.sh under ZeRO-2 on CPU."""
    overrides = [f"output_dir={output_dir}", "train.resume=auto"]
    if processes == 1:
        return [sys.executable, str(ROOT / "train" / "finetune.py"), "--config", str(config), *overrides]
    return [str(ROOT / "launch.sh"), "--cpu", "--nproc", str(processes), "--zero", "2", "--main-port", str(free_port()),
            str(config), *overrides]


def _start(command: list[str], log: Path, marker: str) -> subprocess.Popen:
    env = {**os.environ, MARKER: marker, "OMP_NUM_THREADS": "1", "ECHO_CPU_THREADS": "1", "WANDB_MODE": "disabled"}
    with log.open("a") as handle:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def marked_processes(marker: str) -> list[psutil.Process]:
    """The live processes carrying ``marker`` in their environment (every process of one run)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_run(process: subprocess.Popen, marker: str) -> None:
    """SIGKILL every process of a run, as a preempted node loses them all.

    The launcher's group and the groups of all its descendants are killed together (torchrun
    puts each worker in a session of its own); then any process still carrying ``marker`` in
    its environment (one forked between the snapshot and the kill) is killed, until none is left.
    """
    try:
        members = [process.pid] + [child.pid for child in psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        members = []
    groups = set()
    for pid in members:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    groups.discard(os.getpgrp())  # never this harness's own group
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
    process.wait()
    deadline = time.monotonic() + 30
    while stragglers := marked_processes(marker):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {[p.pid for p in stragglers]} of a killed run survived SIGKILL")
        for straggler in stragglers:
            straggler.kill()
        time.sleep(0.05)


def _staging_entries(output_dir: Path) -> list[str]:
    """Hidden staging or retired folders of checkpoints and the export: what a write in progress leaves."""
    found = [entry.name for entry in (output_dir / CHECKPOINTS).glob(".step-*")] if (output_dir / CHECKPOINTS).is_dir() else []
    found += [entry.name for entry in output_dir.glob(".export.*")]
    return sorted(found)


def _wait(process: subprocess.Popen, until) -> bool:
    """Poll every 0.5 ms until ``until()`` holds (True) or the process exits (False)."""
    while not until():
        if process.poll() is not None:
            return False
        time.sleep(0.0005)
    return True


def run_uninterrupted(command: list[str], output_dir: Path, log: Path) -> Timeline:
    """Run to the end; raises RuntimeError if it fails."""
    started = time.monotonic()
    process = _start(command, log, marker=uuid.uuid4().hex)
    _wait(process, output_dir.exists)
    first_write = time.monotonic() - started
    if process.wait(timeout=RUN_TIMEOUT_S) != 0:
        raise RuntimeError(f"uninterrupted run failed (exit {process.returncode}); see {log}")
    return Timeline(first_write, time.monotonic() - started)


def inject_kill(command: list[str], output_dir: Path, log: Path, fault: str, rng: random.Random,
                reference: Timeline) -> tuple[float, str] | None:
    """Start the run and kill it as ``fault`` says; returns (seconds after launch, staging folder hit),
    or None when the run finished first or a targeted write ended before the kill (a miss)."""
    marker = uuid.uuid4().hex
    if fault == RANDOM:
        delay = rng.uniform(0, reference.exit_s - reference.first_write_s)
        target = None
    else:
        target = rng.choice([f"step-{step}" for step in range(SAVE_EVERY, STEPS + 1, SAVE_EVERY)] + ["export"])
        delay = rng.uniform(0, WRITE_KILL_DELAY_S)
    started = time.monotonic()
    process = _start(command, log, marker)
    if target is None:
        reached = _wait(process, output_dir.exists)
    else:
        folder = output_dir if target == "export" else output_dir / CHECKPOINTS
        reached = _wait(process, lambda: folder.is_dir() and any(folder.glob(f".{target}.*")))
    deadline = time.monotonic() + delay
    reached = reached and _wait(process, lambda: time.monotonic() >= deadline)
    if not reached:
        process.wait()
        return None
    kill_s = time.monotonic() - started
    kill_run(process, marker)
    with log.open("a") as handle:
        handle.write(f"\n=== fault injection: SIGKILL at {kill_s:.3f} s after launch ===\n")
    hit = ",".join(_staging_entries(output_dir))
    if target is not None and not hit:
        return None
    return kill_s, hit


def folder_problems(got: Path, expected: Path, got_run: Path, expected_run: Path, optional: tuple[str, ...] = ()) -> list[str]:
    """How a published folder differs from the reference run's: a file missing or unexpected, tensors
    further than TOLERANCE, any other file not byte-identical once the run folder's path (which configs
    and model cards record) is replaced by the reference's, anything unreadable.

    ``optional`` names files a run writes into the folder after publishing it (the final
    checkpoint's model card): they may be missing, but not different.
    """
    files = {path.relative_to(expected) for path in expected.rglob("*") if path.is_file()}
    present = {path.relative_to(got) for path in got.rglob("*") if path.is_file()}
    problems = [f"{got / name}: missing" for name in sorted(files - present) if name.name not in optional]
    problems += [f"{got / name}: unexpected" for name in sorted(present - files)]
    for name in sorted(files & present):
        if name.suffix != ".safetensors":
            content = (got / name).read_bytes().replace(str(got_run).encode(), str(expected_run).encode())
            if content != (expected / name).read_bytes():
                problems.append(f"{got / name}: not byte-identical to the reference")
            continue
        try:
            a, b = load_file(got / name), load_file(expected / name)
        except Exception as error:  # unreadable is exactly what this looks for
            problems.append(f"{got / name}: unreadable ({type(error).__name__}: {str(error)[:80]})")
            continue
        if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in b):
            problems.append(f"{got / name}: other tensors than the reference's")
        elif (delta := _max_delta(a, b)) > TOLERANCE:
            problems.append(f"{got / name}: max |Δ| {delta:.1e} from the reference")
    return problems


def _max_delta(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in b if b[k].numel()), default=0.0)


def run_problems(output_dir: Path, reference: Path, completed: bool) -> list[str]:
    """Data lost in a run's folder: published checkpoints or export unlike the reference's,
    and, once the run has completed, any checkpoint or the export missing."""
    problems = []
    references = {path.name: path for path in (reference / CHECKPOINTS).glob("step-*")}
    published = {path.name: path for path in (output_dir / CHECKPOINTS).glob("step-*")} if (output_dir / CHECKPOINTS).is_dir() else {}
    for name, path in sorted(published.items()):
        if name not in references:
            problems.append(f"{path}: no such checkpoint in the reference")
            continue
        problems += folder_problems(path, references[name], output_dir, reference, optional=("MODEL_CARD.md",))
    if (output_dir / "export").exists():
        problems += folder_problems(output_dir / "export", reference / "export", output_dir, reference)
    if completed:
        problems += [f"{output_dir / CHECKPOINTS / name}: missing after the run completed"
                     for name in sorted(set(references) - set(published))]
        if not (output_dir / "export").is_dir():
            problems.append(f"{output_dir / 'export'}: missing after the run completed")
    return problems


def run_trial(trial: Trial, config: Path, folder: Path, reference_dir: Path, timeline: Timeline,
              rng: random.Random, attempts: int = 5) -> Trial:
    """Kill a run as ``trial.fault`` says (drawing again after a miss), check the disk, resume, compare."""
    for attempt in range(attempts):
        output_dir = folder / f"run-{attempt}"
        shutil.rmtree(output_dir, ignore_errors=True)
        log = folder / f"run-{attempt}.log"
        kill = inject_kill(run_command(trial.processes, config, output_dir), output_dir, log, trial.fault, rng, timeline)
        if kill is not None:
            break
        trial.misses += 1
    else:
        raise RuntimeError(f"{trial.fault}: no kill landed in {attempts} attempts; see {folder}")
    trial.kill_s, trial.write_hit = kill
    trial.complete_at_kill = sorted((path.name for path in (output_dir / CHECKPOINTS).glob("step-*")),
                                    key=lambda name: int(name.split("-")[1])) if (output_dir / CHECKPOINTS).is_dir() else []
    trial.complete_at_kill += ["export"] if (output_dir / "export").is_dir() else []
    trial.data_lost = run_problems(output_dir, reference_dir, completed=False)

    resumed = _start(run_command(trial.processes, config, output_dir), log, marker=uuid.uuid4().hex)
    trial.finished = resumed.wait(timeout=RUN_TIMEOUT_S) == 0 and (output_dir / "export").is_dir()
    trial.data_lost += run_problems(output_dir, reference_dir, completed=True)
    if (output_dir / "export" / "model.safetensors").is_file():
        trial.max_delta = _max_delta(load_file(output_dir / "export" / "model.safetensors"),
                                     load_file(reference_dir / "export" / "model.safetensors"))
    return trial


def run_trials(processes: int, trials: int, write_kills: int, seed: int, work: Path, report=print) -> list[Trial]:
    """The reference run, then ``trials`` random-moment kills and ``write_kills`` kills during a write."""
    work.mkdir(parents=True, exist_ok=True)
    config = write_run_config(work)
    reference_dir = work / "reference"
    timeline = run_uninterrupted(run_command(processes, config, reference_dir), reference_dir, work / "reference.log")
    report(f"{processes}p reference: first write at {timeline.first_write_s:.2f} s, exit at {timeline.exit_s:.2f} s")
    rng = random.Random(seed * 1000 + processes)
    results = []
    for fault, count in ((RANDOM, trials), (DURING_WRITE, write_kills)):
        for index in range(count):
            folder = work / f"{'random' if fault == RANDOM else 'write'}-{index:02d}"
            folder.mkdir()
            trial = run_trial(Trial(processes, fault, index), config, folder, reference_dir, timeline, rng)
            report(trial.line())
            results.append(trial)
    return results


def _ok(trial: Trial) -> bool:
    return trial.finished and not trial.data_lost and trial.max_delta <= TOLERANCE


def summary_table(results: list[Trial], command: dict[int, str]) -> str:
    """The closing table: per fault class and process count, trials, finished runs, data lost, max |Δ|, command."""
    lines = ["| fault class | processes | trials injected | runs that finished | data lost | max abs Δ of final weights | command |",
             "|---|---|---|---|---|---|---|"]
    for processes in sorted({trial.processes for trial in results}):
        for fault in (RANDOM, DURING_WRITE):
            rows = [trial for trial in results if trial.processes == processes and trial.fault == fault]
            if not rows:
                continue
            where = "1 process" if processes == 1 else f"{processes} processes, ZeRO-2"
            lost = sum(len(trial.data_lost) for trial in rows)
            delta = max(trial.max_delta for trial in rows)
            lines.append(f"| {fault} | {where} | {len(rows)} | {sum(trial.finished for trial in rows)} | {lost} | "
                         f"{delta:.1e} | `{command[processes]}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.launchers.fault_injection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", choices=(1, 2), default=[1, 2],
                        help="1: one process; 2: two processes under DeepSpeed ZeRO-2 on CPU")
    parser.add_argument("--trials", type=int, default=20, help="kills at a random moment (anywhere), per process count")
    parser.add_argument("--write-kills", type=int, default=8, help="kills during a checkpoint write, per process count")
    parser.add_argument("--seed", type=int, default=0, help="seeds every kill moment")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="fault-injection-"))
    results, command = [], {}
    try:
        for processes in args.processes:
            command[processes] = ("python -m train.launchers.fault_injection " +
                                  shlex.join(["--processes", str(processes), "--trials", str(args.trials),
                                              "--write-kills", str(args.write_kills), "--seed", str(args.seed)]))
            results += run_trials(processes, args.trials, args.write_kills, args.seed, work / f"{processes}p")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(summary_table(results, command))
    return 0 if all(_ok(trial) for trial in results) else 1


if __name__ == "__main__":
    sys.exit(main())
