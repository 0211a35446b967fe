#!/usr/bin/env bash
# HCL's hardness beta with and without debiasing: beta = 0 is DCL, beta = 0 and tau_plus = 0 is SimCLR.
exec bash "$(dirname "$0")/study.sh" hcl_beta method=hcl 'sampler.beta=0,0.5,1,2' 'sampler.tau_plus=0,0.1' \
    'seed=0,1' "$@"
