#!/usr/bin/env bash
# DCL's class prior tau_plus, for DCL and for HCL (at its default beta = 1): tau_plus = 0 is SimCLR
# (DCL) or hardness weighting without debiasing (HCL); the DCL paper reports 0.1 best on STL-10.
exec bash "$(dirname "$0")/study.sh" tau_plus 'method=dcl,hcl' 'sampler.tau_plus=0,0.01,0.05,0.1' 'seed=0,1,2' "$@"
