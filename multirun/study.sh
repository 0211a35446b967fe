#!/usr/bin/env bash
# One study: `bash multirun/study.sh <study> <train.py overrides, sweeps included>`. The recipes call it.
# Runs the sweep into multirun/<study>/<date>_<time>/<job>/ (every job in wandb group <study>-<folder name>:
# one group per sweep folder, so a new run of a study is not mixed into an earlier one's group, and one
# continued with SWEEP_DIR=<its folder> stays in its own), then writes the sweep report (report.md,
# report.csv, report_*.png) into that folder, also when jobs failed.
# Environment: PYTHON (default python), SWEEP_DIR (default multirun/<study>/<date>_<time>).
set -uo pipefail
cd "$(dirname "$0")/.."
study=$1
shift
python=${PYTHON:-python}
stamp=$(date +%Y-%m-%d_%H-%M-%S)  # once: the same for every job of this sweep
dir=${SWEEP_DIR:-multirun/$study/$stamp}
dir=${dir%/}
name=$(basename "$dir")
# The wandb group, for the loggers that have one (wandb, the default, and many): logger=csv|tensorboard|none
# and the debug modes (which select logger=none) have no group setting; a later argument wins.
group=("logger.group=$study-$name")
for arg in "$@"; do
    case $arg in
        logger=wandb | logger=many) group=("logger.group=$study-$name") ;;
        logger=* | debug=*) group=() ;;
    esac
done
# published=null: a recipe's published number (experiment=...) belongs to its own setting, not to a grid around it.
"$python" train.py -m "${group[@]}" "hydra.sweep.dir=$dir" published=null "$@"
status=$?
if ! "$python" -m cl_suite.report "$dir" && [ "$status" -eq 0 ]; then
    status=1
fi
exit "$status"
