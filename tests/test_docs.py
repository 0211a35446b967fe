"""The command lines the READMEs show compose and pass start-up validation: a renamed key, group or
option in the code fails here instead of in a reader's terminal. Every `python train.py ...`,
`python evaluate.py ...` and `torchrun ... train.py ...` line of the READMEs (code blocks and inline
code) and of the config files' header comments is taken as written; a sweep (`-m`) is expanded as Hydra's basic sweeper does and
its first job is checked. A placeholder (`run=<run dir>`) becomes a plain word: what is checked is the
config, not a run folder."""
from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from cl_suite.engine.validation import validate_evaluate_config, validate_train_config
from helpers import CONF, ROOT

# The READMEs, and the usage lines in the headers of the config files and sweep recipes.
DOCS = ("README.md", "multirun/README.md", "ARCHITECTURE.md",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src" / "cl_suite" / "conf").rglob("*.yaml")),
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "multirun").glob("*.yaml")))
COMMAND = re.compile(r"(?:^|`|\s)((?:\S*python\S*|torchrun)\s[^`#]*?\b(train|evaluate)\.py(?:\s[^`#]*)?)(?=`|#|$)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, arguments) of every documented train.py / evaluate.py command line."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8").replace("\\\n", " ")
        for number, line in enumerate(text.splitlines(), 1):
            for match in COMMAND.finditer(line):
                words = shlex.split(re.sub(r"<[^<>]+>", "placeholder", match.group(1)))  # run=<run dir>
                script = next(w for w in words if w.endswith(("train.py", "evaluate.py")))
                found.append((f"{doc}:{number}", script.rsplit("/", 1)[-1].removesuffix(".py"),
                              words[words.index(script) + 1:]))
    return found


COMMANDS = documented_commands()


def test_the_readmes_show_commands_of_both_entry_points():
    scripts = [script for _, script, _ in COMMANDS]
    assert scripts.count("train") >= 15 and scripts.count("evaluate") >= 8


def first_job(arguments: list[str]) -> list[str]:
    if "-m" not in arguments:
        return arguments
    overrides = OverridesParser.create().parse_overrides([a for a in arguments if a != "-m"])
    sweep = [o for o in overrides if not o.key_or_group.startswith("hydra")]
    return [*BasicSweeper.split_arguments(sweep, None)[0][0],
            *(o.input_line for o in overrides if o.key_or_group.startswith("hydra"))]


@pytest.mark.parametrize("where, script, arguments", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_documented_command_composes_and_validates(where, script, arguments):
    job = first_job(arguments)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name=script, overrides=job, return_hydra_config=True)
    if script == "train":
        validate_train_config(cfg)
    else:
        validate_evaluate_config(cfg)
