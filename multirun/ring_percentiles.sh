#!/usr/bin/env bash
# The ring's similarity-percentile window: 0..100 keeps every candidate (SimCLR); 90..99 is the Ring
# paper's default window over a queue or bank, 50..95 its SimCLR-Ring window.
exec bash "$(dirname "$0")/study.sh" ring_percentiles method=ring 'sampler.lower_percentile=0,50,80,90' \
    'sampler.upper_percentile=95,99,100' 'seed=0,1' "$@"
