#!/usr/bin/env bash
# DCL's class prior: tau_plus = 0 is plain SimCLR (NT-Xent); the paper reports 0.1 best on STL-10.
set -euo pipefail
cd "$(dirname "$0")/.."
study=dcl_tau_plus
exec python train.py -m method=dcl 'sampler.tau_plus=0,0.01,0.05,0.1' 'seed=0,1,2' \
    logger.group=$study "hydra.sweep.dir=multirun/$study/\${now:%Y-%m-%d_%H-%M-%S}" "$@"
