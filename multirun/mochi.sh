#!/usr/bin/env bash
# MoCHi's synthetic negatives over MoCo's queue: s1 mixes of two hard negatives, s2 mixes of a hard
# negative with the query, both drawn from the n_hard hardest queue entries; s1 = s2 = 0 is MoCo.
exec bash "$(dirname "$0")/study.sh" mochi method=mochi 'sampler.n_hard=256,1024' 'sampler.s1=0,256' \
    'sampler.s2=0,256' 'seed=0,1' "$@"
