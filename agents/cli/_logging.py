"""``semper -v`` and ``-vv``: what each level shows on stderr.

``-v`` shows the steps of an agent (``semper.agent``: connect, hello, each request
sent or served) and of the command (``semper.cli``), plus every logger's info;
``-vv`` shows every logger's debug output too (``semper.transport``, ...). The step
lines are logged at debug level, so that an agent run for days without ``-v``
never formats them.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["STEP_LOGGERS", "configure_logging"]

STEP_LOGGERS = ("semper.agent", "semper.cli")


def configure_logging(verbose: int) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(max(verbose, 0), 2)]
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if verbose:
        logging.getLogger().setLevel(level)
        for name in STEP_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
