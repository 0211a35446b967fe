"""Re-evaluate a run's checkpoint: `python evaluate.py run=outputs/<date>/<time> [protocol=[linear,knn]]`.

Frozen features are extracted once and every protocol (linear, knn, retrieval, ood, transfer) reads
them. Results go to <run>/eval.json (keyed by protocol) and to the run's wandb summary.
"""
import hydra
from omegaconf import DictConfig

from cl_suite.errors import user_errors_without_traceback
from cl_suite.eval.run_evaluation import evaluate_run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@user_errors_without_traceback
def main(cfg: DictConfig) -> None:
    result = evaluate_run(cfg)
    print(f"{result['checkpoint']} (epoch {result['epoch']}, step {result['step']})")
    for protocol, metrics in result["protocols"].items():
        print(protocol)
        for key, value in metrics.items():
            print(f"  {key:<36}{value:8.2f}")


if __name__ == "__main__":
    main()
