"""Structured request logs: one JSON line per request, with model, request id, status and timings.

Prompt text is never logged unless the config's `observability.log_prompts` is
true. Lines go to a file per process under Ray's session log folder by default
(`observability.access_log: file`), so they do not flow through Ray's log
streaming to the driver on the hot path; `stderr` or `off` are the other choices.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

ACCESS_LOGGER = "serving.access"
_configured = False


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        return json.dumps(entry, separators=(",", ":"), default=str)


def log_dir() -> Path:
    ray_logs = Path("/tmp/ray/session_latest/logs")
    base = Path(os.environ.get("SERVING_LOG_DIR", ray_logs / "serving" if ray_logs.exists() else "/tmp/serving-logs"))
    base.mkdir(parents=True, exist_ok=True)
    return base


def configure_access_log(mode: str) -> logging.Logger:
    global _configured
    logger = logging.getLogger(ACCESS_LOGGER)
    if _configured:
        return logger
    _configured = True
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if mode == "off":
        logger.disabled = True
        return logger
    if mode == "stderr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(log_dir() / f"access-{os.getpid()}.jsonl")
    handler.setFormatter(JSONFormatter())
    logger.addHandler(handler)
    return logger


def access_log(event: str, **fields) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.disabled or not logger.handlers:
        return
    logger.info(event, extra={"fields": fields})
