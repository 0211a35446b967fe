#!/usr/bin/env bash
# HCL's hardness beta with and without debiasing: beta = 0 is DCL, beta = 0 and tau_plus = 0 is SimCLR.
set -euo pipefail
cd "$(dirname "$0")/.."
study=hcl_beta
exec python train.py -m method=hcl 'sampler.beta=0,0.5,1,2' 'sampler.tau_plus=0,0.1' 'seed=0,1' \
    logger.group=$study "hydra.sweep.dir=multirun/$study/\${now:%Y-%m-%d_%H-%M-%S}" "$@"
