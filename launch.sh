#!/usr/bin/env bash
# Launch fine-tuning on one or many GPUs (or CPU processes) through accelerate, with
# DDP or DeepSpeed ZeRO-2/3 picked from the shipped configs; prints the command it runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<'EOF'
usage: ./launch.sh [--gpus N | --cpu --nproc N] [--zero 2|3] [--offload]
                   [--num-machines M --machine-rank R --main-address HOST --main-port PORT]
                   [--hostfile FILE] [--dry-run] CONFIG [section.key=value ...]

Runs `accelerate launch ... train/finetune.py --config CONFIG [overrides]` with the
matching config from configs/accelerate/ (DeepSpeed files in configs/deepspeed/), after
`python -m train.preflight` has checked the config, the data and the output folder.

  --gpus N          processes per machine, one per GPU (default: every visible GPU)
  --cpu             run on CPU: DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu) with
                    --zero, torch DDP on gloo (ACCELERATE_USE_CPU=1) without
  --nproc N         processes per machine with --cpu (default 1)
  --zero 2|3        DeepSpeed ZeRO stage (default: plain DDP)
  --offload         offload optimizer states and parameters to CPU memory (needs --zero 3)
  --num-machines M  machines in the job (default 1); the process count is M x per-machine
  --machine-rank R  this machine's rank, 0..M-1 (run launch.sh on every machine)
  --main-address H  address of machine 0
  --main-port P     a free port on machine 0
  --hostfile FILE   DeepSpeed hostfile: start every machine from machine 0 over pdsh
                    (needs --zero; then no --machine-rank)
  --dry-run         print the command without running it (or the preflight check)
  -h, --help        this text

  ./launch.sh sweep SWEEP.yaml [key=value ...]   runs python -m train.launchers.sweep (its --help)

The batch keys are global: train.batch_size queries per contrastive batch over all
processes (it must divide by the process count). Examples:

  ./launch.sh --gpus 8 --zero 2 configs/echo_lora.yaml train.chunk_size=64
  ./launch.sh --cpu --nproc 2 --zero 3 configs/echo_lora.yaml train.max_steps=3
  ./launch.sh --gpus 8 --zero 3 --num-machines 2 --machine-rank 0 \
      --main-address 10.0.0.1 --main-port 29500 configs/paper/mistral7b_echo.yaml
EOF
}

die() {
    echo "launch.sh: $*" >&2
    exit 2
}

positive_int() {  # name value
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got '$2'"
}

train() {
    local gpus="" cpu=0 nproc="" zero="" offload=0 machines=1 machine_rank="" address="" port=""
    local hostfile="" dry_run=0
    while [[ $# -gt 0 && "$1" == -* ]]; do
        case "$1" in
            --gpus|--nproc|--zero|--num-machines|--machine-rank|--main-address|--main-port|--hostfile)
                [[ $# -ge 2 ]] || die "$1 needs a value"
                case "$1" in
                    --gpus) positive_int "$1" "$2"; gpus="$2" ;;
                    --nproc) positive_int "$1" "$2"; nproc="$2" ;;
                    --zero) [[ "$2" == 2 || "$2" == 3 ]] || die "--zero is 2 or 3, got '$2'"; zero="$2" ;;
                    --num-machines) positive_int "$1" "$2"; machines="$2" ;;
                    --machine-rank) [[ "$2" =~ ^[0-9]+$ ]] || die "--machine-rank needs an integer, got '$2'"
                                    machine_rank="$2" ;;
                    --main-address) address="$2" ;;
                    --main-port) positive_int "$1" "$2"; port="$2" ;;
                    --hostfile) [[ -f "$2" ]] || die "--hostfile $2: no such file"; hostfile="$2" ;;
                esac
                shift 2 ;;
            --cpu) cpu=1; shift ;;
            --offload) offload=1; shift ;;
            --dry-run) dry_run=1; shift ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown option '$1' (see ./launch.sh --help)" ;;
        esac
    done
    [[ $# -ge 1 ]] || die "missing CONFIG (see ./launch.sh --help)"
    local config="$1"
    shift
    [[ -f "$config" ]] || die "CONFIG $config: no such file"
    local override
    for override in "$@"; do
        [[ "$override" == *=* && "$override" != -* ]] || die "'$override' is not a section.key=value override"
    done

    [[ $cpu == 1 && -n "$gpus" ]] && die "--gpus and --cpu exclude each other"
    [[ $cpu == 0 && -n "$nproc" ]] && die "--nproc goes with --cpu (use --gpus N on GPUs)"
    [[ $offload == 1 && "$zero" != 3 ]] && die "--offload needs --zero 3"
    [[ -n "$hostfile" && -z "$zero" ]] && die "--hostfile needs --zero (DeepSpeed's pdsh launcher); for DDP run launch.sh on every machine with --machine-rank"
    [[ -n "$hostfile" && -n "$machine_rank" ]] && die "--hostfile starts every machine from machine 0: drop --machine-rank"
    if [[ $machines -gt 1 && -z "$hostfile" ]]; then
        [[ -n "$machine_rank" && -n "$address" && -n "$port" ]] \
            || die "--num-machines $machines needs --machine-rank, --main-address and --main-port"
        [[ $machine_rank -lt $machines ]] || die "--machine-rank $machine_rank must be below --num-machines $machines"
    fi

    local per_machine env_vars=()
    if [[ $cpu == 1 ]]; then
        per_machine="${nproc:-1}"
        if [[ -n "$zero" ]]; then
            # ACCELERATE_USE_CPU would turn DeepSpeed off; DeepSpeed's CPU accelerator uses gloo.
            env_vars+=(DS_ACCELERATOR=cpu ACCELERATE_USE_CPU=false)
        else
            # Without it accelerate ignores WORLD_SIZE on a machine without GPUs.
            env_vars+=(ACCELERATE_USE_CPU=1)
        fi
    else
        if [[ -n "$gpus" ]]; then
            per_machine="$gpus"
        else
            per_machine="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
            [[ "$per_machine" -ge 1 ]] || die "no GPU found: pass --gpus N, or --cpu --nproc N"
        fi
    fi

    local accelerate_config="$ROOT/configs/accelerate/ddp.yaml"
    local launch=(accelerate launch)
    if [[ -n "$zero" ]]; then
        local stage="zero$zero"
        [[ $offload == 1 ]] && stage="zero3_offload"
        accelerate_config="$ROOT/configs/accelerate/$stage.yaml"
        launch+=(--config_file "$accelerate_config" --deepspeed_config_file "$ROOT/configs/deepspeed/$stage.json")
    else
        launch+=(--config_file "$accelerate_config")
    fi
    launch+=(--num_processes "$((per_machine * machines))" --num_machines "$machines")
    if [[ $cpu == 1 ]]; then
        local cores threads
        cores="$(nproc)"
        threads=$(( cores / per_machine > 0 ? cores / per_machine : 1 ))
        launch+=(--num_cpu_threads_per_process "$threads")
    fi
    [[ -n "$machine_rank" ]] && launch+=(--machine_rank "$machine_rank")
    [[ -n "$address" ]] && launch+=(--main_process_ip "$address")
    [[ -n "$port" ]] && launch+=(--main_process_port "$port")
    [[ -n "$hostfile" ]] && launch+=(--deepspeed_hostfile "$hostfile" --deepspeed_multinode_launcher pdsh)
    launch+=("$ROOT/train/finetune.py" --config "$config" "$@")

    local command=(env "${env_vars[@]}" "${launch[@]}")
    [[ ${#env_vars[@]} -eq 0 ]] && command=("${launch[@]}")
    if [[ $dry_run == 0 ]]; then
        # Bad input (config, data, output folder) ends here in one line with exit code 2:
        # inside the launched processes accelerate would turn it into a traceback and exit code 1.
        WORLD_SIZE="$((per_machine * machines))" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
            python -m train.preflight --config "$config" "$@" >/dev/null || exit $?
    fi
    printf '%q ' "${command[@]}" | sed 's/ $//'
    echo
    [[ $dry_run == 1 ]] && exit 0
    exec "${command[@]}"
}

case "${1:-}" in
    -h|--help) usage ;;
    sweep) shift; PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec python -m train.launchers.sweep "$@" ;;
    *) train "$@" ;;
esac
