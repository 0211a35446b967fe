#!/usr/bin/env bash
# The Ring code's threshold policies for the outer fraction (Wu et al. 2021) on MoCo-Ring: constant u = 0.1,
# annealed from 1 to 0.1 over the first sampler.anneal_epochs (the code's max_anneal_epoch, 100) linearly,
# in 0.1 steps or exponentially, or moved by the loss (adaptive_loss). The accuracy-driven policy needs an
# evaluation every epoch: add it by hand ('sampler.anneal=adaptive_accuracy' trainer.eval_every_epochs=1).
exec bash "$(dirname "$0")/study.sh" ring_anneal method=moco_ring \
    'sampler.anneal=null,linear,step,exponential,adaptive_loss' 'seed=0,1' "$@"
