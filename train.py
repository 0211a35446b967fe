"""Pre-train an encoder: `python train.py method=simclr dataset=cifar10 backbone=resnet18`.

With no arguments: SimCLR on the bundled digits data set, on the CPU in about a minute. The same entry
point is `python -m cl_suite.train` (or `cl-suite-train`) where the suite is installed as a package.
"""
from cl_suite.cli import train_main

if __name__ == "__main__":
    train_main()
