"""Re-evaluate a run's checkpoint: `python evaluate.py run=outputs/<date>/<time> [protocol=[linear,knn]]`,
or an exported backbone: `python evaluate.py checkpoint=<run>/backbone_state_dict.pt [dataset=cifar10]`.

Frozen features are extracted once and every protocol (linear, knn, retrieval, ood, transfer) reads
them. Results go to <run>/eval.json (keyed by protocol) and to the run's wandb summary; for an exported
backbone to <file stem>.eval.json beside the file. The same entry point is `python -m cl_suite.evaluate`
(or `cl-suite-evaluate`) where the suite is installed as a package.
"""
from cl_suite.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
