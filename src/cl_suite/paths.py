"""Where the suite's own files are, in a checkout and in an installed package alike."""
from pathlib import Path

# The config tree ships inside the package (``pip install .`` installs it as package data); the
# checkout's top-level ``conf`` is a link to it.
CONF_DIR = Path(__file__).resolve().parent / "conf"
# In a run folder: why train.py refused the job's config (the sweep report lists the job as failed with it).
REFUSED_FILE = "refused.txt"
# In a run folder: the checkpoints, and the name of the newest one (the report reads whether it exists).
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
