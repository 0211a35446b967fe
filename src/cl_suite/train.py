"""``python -m cl_suite.train [overrides]``: the same as the checkout's ``python train.py``."""
from cl_suite.cli import train_main

if __name__ == "__main__":
    train_main()
