"""Secret values kept out of every log line: the registry both the logger and the W&B bridge redact with.

Its own module so that `monitoring.logging` and `monitoring.wandb_bridge` both use it without importing each other.
"""

from __future__ import annotations

import json as jsonlib
import re
import threading

MASK = "***"
"""Replacement text for every redacted value."""

MIN_SECRET_LENGTH = 4
"""Known secret values shorter than this are ignored (they would redact ordinary words)."""


class _SecretValues:
    """Hold the known secret values and the compiled pattern that replaces them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> bool:
        """Remember *value* (and its JSON-escaped form); return False when it is too short."""
        value = value.strip()
        if len(value) < MIN_SECRET_LENGTH:
            return False
        variants = {value, jsonlib.dumps(value, ensure_ascii=False)[1:-1], jsonlib.dumps(value)[1:-1]}
        with self._lock:
            if variants <= self._values:
                return True
            self._values |= variants
            # Longest first so a secret that contains another is replaced whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
        return True

    def clear(self) -> None:
        """Forget every known value."""
        with self._lock:
            self._values.clear()
            self._pattern = None

    def sub(self, text: str) -> str:
        """Return *text* with every known value replaced by the mask."""
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(MASK, text)


_SECRETS = _SecretValues()


def register_secret(value: str) -> None:
    """Redact every later occurrence of *value* in log output; ignore values under 4 characters."""
    if not isinstance(value, str):
        raise TypeError(f"register_secret expects a str, got {type(value).__name__}")
    _SECRETS.add(value)


def redact_text(text: str) -> str:
    """Return *text* with every registered secret value replaced by ``***``."""
    return _SECRETS.sub(text)


def forget_secrets() -> None:
    """Forget every registered value (tests reset logging between cases)."""
    _SECRETS.clear()
