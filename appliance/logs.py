"""Logging: one line per event on stderr, with the time, level, core and process.

    2025-01-31T12:00:00.123Z INFO core=1 pid=4242 worker started on cpu 1

or, with ``--event-log-format json`` (``set_format("json")``), one JSON object a line:

    {"time":"2025-01-31T12:00:00.123Z","level":"INFO","core":"1","pid":4242,"message":"..."}

The supervisor's own lines say ``core=-``; a line about one worker names its core
(``log.info(..., extra={"core": 1})``); a worker's lines carry its core by default.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER_NAME = "mtcp_appliance"
log = logging.getLogger(LOGGER_NAME)

_default_core = "-"
_format = "text"


class _OneLine(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "core"):
            record.core = _default_core
        line = super().format(record)
        return line.replace("\r", "\\r").replace("\n", " | ")


class _Json(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        core = getattr(record, "core", _default_core)
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        obj = {
            "time": f"{t}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "core": str(core),
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def set_format(fmt: str) -> None:
    """ "text" (default) or "json"; takes effect at the next ``setup``."""
    global _format
    if fmt not in ("text", "json"):
        raise ValueError(f"event log format must be text or json, got {fmt!r}")
    _format = fmt


def setup(level: int = logging.INFO) -> None:
    """Sends the appliance's log to stderr (again: also after a fork or on SIGHUP)."""
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    handler = logging.StreamHandler(sys.stderr)
    if _format == "json":
        handler.setFormatter(_Json())
    else:
        handler.setFormatter(
            _OneLine(
                "%(asctime)s.%(msecs)03dZ %(levelname)s core=%(core)s pid=%(process)d %(message)s",
                datefmt="%Y-%m-%dT%H:%M:%S",
            )
        )
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def set_core(core: int | str) -> None:
    """The core this process's lines name by default (a worker's own core)."""
    global _default_core
    _default_core = str(core)
