"""The command lines the docs show work as written: a renamed key, group, option or flag fails here
instead of in a reader's terminal. Every `python train.py ...`, `python evaluate.py ...` and
`torchrun ... train.py ...` line of the READMEs, ARCHITECTURE.md and the config and sweep files' header
comments (code blocks and inline code) composes and passes start-up validation; a sweep (`-m`) is
expanded as Hydra's basic sweeper does and its first job is checked. Every documented
`python -m cl_suite.report|export` line with arguments parses. A placeholder (`run=<run dir>`) becomes a
plain word: what is checked is the command, not a run folder."""
from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from cl_suite.engine.validation import validate_evaluate_config, validate_train_config
from helpers import CONF, ROOT, TINY

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
                arguments = words[words.index(script) + 1:]
                if "|" in arguments:  # `... | grep ...`: the shell's, not the script's
                    arguments = arguments[:arguments.index("|")]
                if "--cfg" in arguments:  # Hydra's print flag and its value (job | hydra | all)
                    at = arguments.index("--cfg")
                    arguments = arguments[:at] + arguments[at + 2:]
                found.append((f"{doc}:{number}", script.rsplit("/", 1)[-1].removesuffix(".py"), arguments))
    return found


COMMANDS = documented_commands()
MODULE = re.compile(r"(?:^|`|\s)\S*python\S*\s+-m\s+cl_suite\.(report|export)\s+([^`#]+)")


def documented_module_commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, arguments) of every documented ``python -m cl_suite.report|export`` line with
    arguments (a bare mention in a sentence has none)."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8").replace("\\\n", " ")
        for number, line in enumerate(text.splitlines(), 1):
            for match in MODULE.finditer(line):
                arguments = shlex.split(re.sub(r"<[^<>]+>", "placeholder", match.group(2)))
                found.append((f"{doc}:{number}", match.group(1), arguments))
    return found


MODULE_COMMANDS = documented_module_commands()


def test_the_readmes_show_commands_of_both_entry_points():
    scripts = [script for _, script, _ in COMMANDS]
    assert scripts.count("train") >= 15 and scripts.count("evaluate") >= 8
    modules = [module for _, module, _ in MODULE_COMMANDS]
    assert modules.count("report") >= 8 and modules.count("export") >= 4


@pytest.mark.parametrize("where, module, arguments", MODULE_COMMANDS, ids=[c[0] for c in MODULE_COMMANDS])
def test_a_documented_report_or_export_command_parses(where, module, arguments):
    from cl_suite.export.__main__ import argument_parser as export_parser
    from cl_suite.report.__main__ import argument_parser as report_parser

    parser = {"report": report_parser, "export": export_parser}[module]()
    parser.parse_args(arguments)  # argparse exits (a test error) on an unknown option or a bad choice


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


def test_the_readmes_library_example_runs_as_printed():
    """The "Use as a library" block, pasted into a fresh interpreter namespace (2 of its 200 steps)."""
    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text.split("## Use as a library", 1)[1].split("\n## ", 1)[0],
                          flags=re.S)
    assert "range(200)" in block
    namespace: dict = {}
    exec(compile(block.replace("range(200)", "range(2)"), "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["loss"].ndim == 0 and namespace["step"] == 1


def test_the_readmes_python_api_example_runs_as_printed(tmp_path, monkeypatch):
    """The "From Python" block in a fresh namespace, in an empty working directory, with few steps."""
    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text.split("## From Python (a notebook)", 1)[1].split("\n## ", 1)[0],
                          flags=re.S)
    assert '"trainer.epochs=5"' in block
    quick = ", ".join(f'"{o}"' for o in TINY + ["trainer.max_steps=2", "trainer.eval_at_init=false",
                                                "evaluation.linear.epochs=2"])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace('"trainer.epochs=5"', quick), "README.md", "exec"), namespace)  # noqa: S102
    assert [run.dir for run in namespace["runs"]] == [tmp_path / f"outputs/nb/tau_{tau}" for tau in (0.0, 0.05, 0.1)]
    assert set(namespace["knn"]) == {"knn/top1", "knn/top5"} and not namespace["encoder"].training
    assert (tmp_path / "outputs/nb/tau_0.0/eval.json").is_file()
