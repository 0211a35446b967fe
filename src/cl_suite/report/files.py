"""Writing the report's files into a sweep folder that may come from anyone."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def replaced_file(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` and rename it over ``path`` when the block ends.

    ``open(path, "w")`` would follow a symbolic link planted at ``path`` in a shared sweep folder (and
    create or overwrite its target, e.g. a ``.pth`` file that Python runs at start-up); a rename replaces
    the link itself. A block that fails leaves ``path`` as it was and removes the temporary file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
