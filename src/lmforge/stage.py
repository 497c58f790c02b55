"""Entry-point wrapper for stage scripts: logging, and user errors without a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); an LmforgeError prints one line and exits with status 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        main()
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
