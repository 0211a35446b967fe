"""Values as the suite prints them: overrides in the commands it suggests (pasted into a shell, Hydra reads
back the value) and values in its error messages (as a config file or an override writes them)."""
import re
import shlex

import pytest

from cl_suite.sweeps import command_override, parse_overrides


@pytest.mark.parametrize("value, printed", [
    ("outputs/2026-12-01/10-00-00", "run=outputs/2026-12-01/10-00-00"),  # as it is: nothing to quote
    ("/runs/a b", '"run=/runs/a b"'),  # the shell would split it
    ("/runs/a,b", "\"run='/runs/a,b'\""),  # Hydra would sweep it
    ("/runs/lr=0.1", "\"run='/runs/lr=0.1'\""),
    ("/runs/[b]", "\"run='/runs/[b]'\""),
    (" lead", "\"run=' lead'\""),  # Hydra would strip the space
    ("null", "\"run='null'\""),  # Hydra would read None
    ("1", "\"run='1'\""),  # or an int
    ("/runs/a'b", None),
    ("/runs/a\\b", None),
    ("/runs/a\\", None),
    ("/runs/a\\'b", None),
    ("/runs/$HOME", "'run=/runs/$HOME'"),  # the shell must not expand it
    ("/runs/a\"b!", None),
])
def test_a_printed_override_is_one_shell_word_that_hydra_reads_back(value, printed):
    word = command_override("run", value)
    if printed is not None:
        assert word == printed
    (arg,) = shlex.split(word)
    (override,) = parse_overrides([arg])
    assert override.key_or_group == "run" and not override.is_sweep_override()
    assert override.value() == value and isinstance(override.value(), str)


def test_an_error_shows_a_value_as_the_user_writes_it():
    from omegaconf import OmegaConf

    from cl_suite.errors import as_written

    values = (None, True, False, "auto", 0.1, 3)
    assert [as_written(v) for v in values] == ["null", "true", "false", "'auto'", "0.1", "3"]
    assert as_written([1, None, "a"]) == as_written(OmegaConf.create([1, None, "a"])) == "[1, null, 'a']"
    assert as_written({"a": [True]}) == as_written(OmegaConf.create({"a": [True]})) == "{a: [true]}"


def test_no_refusal_shows_a_value_as_python_writes_it():
    """The 'KEY=VALUE is not allowed' messages go through as_written: a new one written with !r would say
    None or True where the user wrote null or true."""
    from helpers import ROOT

    pattern = re.compile(r"=\{[^{}]*!r\} is not allowed")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in sorted((ROOT / "src" / "cl_suite").rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "use cl_suite.errors.as_written:\n" + "\n".join(found)
