"""Pre-train an encoder: `python train.py method=simclr dataset=cifar10 backbone=resnet18`.

With no arguments: SimCLR on the bundled digits data set, on the CPU in about a minute.
"""
import sys

import hydra
from omegaconf import DictConfig

import cl_suite.resolvers  # noqa: F401  (registers ${cl_suite.run_stamp:} before Hydra composes)
from cl_suite.engine.distributed import worker_rank_hydra_overrides
from cl_suite.engine.trainer import train
from cl_suite.errors import user_errors_without_traceback


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@user_errors_without_traceback
def main(cfg: DictConfig) -> float:
    final = train(cfg)
    # Returned for sweepers that optimise (e.g. Optuna): the headline linear top-1.
    return final["linear/top1"]


if __name__ == "__main__":
    sys.argv.extend(worker_rank_hydra_overrides())
    main()
