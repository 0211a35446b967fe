#!/usr/bin/env bash
# The softmax temperature of the contrastive loss, for a batch (SimCLR) and a queue (MoCo) framework.
exec bash "$(dirname "$0")/study.sh" temperature 'method=simclr,moco' 'method.temperature=0.05,0.1,0.2,0.5' \
    'seed=0,1,2' "$@"
