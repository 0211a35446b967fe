#!/usr/bin/env bash
# The ring's outer and inner fractions (Wu et al. 2021): u = 1, l = 0 keeps every candidate (all 2B
# similarities with the positive prepended once more; the code's SimCLR baseline, which holds it once, is
# method=ring_baseline); u = l = 0.1 is the paper's ring over a queue or bank, u = 0.5, l = 0.1 its
# SimCLR-Ring (method=ring).
exec bash "$(dirname "$0")/study.sh" ring_fractions method=ring 'sampler.outer_fraction=0.2,0.5,1.0' \
    'sampler.inner_fraction=0,0.1,0.2' 'seed=0,1' "$@"
