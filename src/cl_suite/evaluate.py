"""``python -m cl_suite.evaluate [overrides]``: the same as the checkout's ``python evaluate.py``."""
from cl_suite.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
