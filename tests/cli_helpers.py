"""Helpers for tests that call the command line in-process."""
from __future__ import annotations

import contextlib
import io
import logging

from aelab.cli import main


def quiet_main(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) with its output captured, for fixtures that cannot use capsys."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    logger = logging.getLogger("aelab")
    for handler in list(logger.handlers):   # they hold the StringIOs; the next main() makes new ones
        logger.removeHandler(handler)
    return code, out.getvalue(), err.getvalue()


def only_error_line(err: str) -> str:
    """The single 'aelab: error:' line of a failed command (fails if there is more or other)."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aelab: error: "), err
    return lines[0]


def trained_run(folder, data_dir: str, *flags: str) -> str:
    """Train a run on ``data_dir`` into ``folder`` (later flags win over earlier ones); its path."""
    code, _, err = quiet_main(["train", "--data-dir", data_dir, "--no-progress", *flags,
                               "--out", str(folder)])
    assert code == 0, err
    return str(folder)
