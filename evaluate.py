"""Re-evaluate a run's checkpoint: `python evaluate.py run=outputs/<date>/<time> [checkpoint=final]`.

Frozen features are extracted once; kNN and the linear classifier run on the cached features.
Results go to <run>/eval.json and to the run's wandb summary.
"""
import hydra
from omegaconf import DictConfig

from cl_suite.eval.run_evaluation import evaluate_run


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    result = evaluate_run(cfg)
    print(f"{result['checkpoint']} (epoch {result['epoch']}, step {result['step']})")
    for key, value in result["metrics"].items():
        print(f"  {key:<28}{value:8.2f}")


if __name__ == "__main__":
    main()
