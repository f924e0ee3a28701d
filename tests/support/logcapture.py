"""Capture loguru records in a test: ``with captured_logs() as records:``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger

__all__ = ["captured_logs", "events_of"]


@contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """Every record logged inside the block, as ``{"level", "msg", **extra}`` dicts."""
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        records.append({"level": record["level"].name, "msg": record["message"],
                        **record["extra"]})  # fmt: skip

    sink_id = logger.add(sink, level="DEBUG", format="{message}")
    try:
        yield records
    finally:
        logger.remove(sink_id)


def events_of(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == event]
