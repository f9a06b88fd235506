"""``semper -v`` and ``-vv``: what each level shows on stderr.

``-v`` shows the steps of an agent (``semper.agent``: connect, hello, each request
sent or served) and of the command (``semper.cli``), plus every logger's info;
``-vv`` shows every logger's debug output too (``semper.transport``, ...). The step
lines are logged at debug level, so that an agent run for days without ``-v``
never formats them.

A log line may carry a peer's text (its error message in "cannot ask ca for a newer
CRL: ..."): each line's message is shown with what is not printable escaped, as the
commands print (``_text.shown``), so an escape sequence from a peer never reaches the
operator's terminal and a newline never fakes a log line. A traceback stays as it is.
"""

from __future__ import annotations

import logging
import sys

from semper.agents.cli._text import shown

__all__ = ["STEP_LOGGERS", "ShownFormatter", "configure_logging"]

STEP_LOGGERS = ("semper.agent", "semper.cli")


FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class ShownFormatter(logging.Formatter):
    """Each line as ``FORMAT`` has it, its unprintable characters escaped (see above)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return shown(super().formatMessage(record))


def configure_logging(verbose: int) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(max(verbose, 0), 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ShownFormatter(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    if verbose:
        logging.getLogger().setLevel(level)
        for name in STEP_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)
