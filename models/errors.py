"""Typed errors shared by every package.

Recoverable errors (bad input that the caller can report and move past) derive from
``CitybrainError``; each names the field that was wrong so an operator or a field engineer can
fix the input without reading a traceback.
"""

from __future__ import annotations


class CitybrainError(Exception):
    """Base of every error this project raises on purpose."""


class ValidationError(CitybrainError, ValueError):
    """A value does not fit: ``field`` says which one, ``reason`` says what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")

    def __reduce__(self) -> tuple[object, tuple[object, ...], dict[str, object]]:
        """Rebuilt as it was (its message and every field, whatever its subclass's
        constructor takes), so that it crosses a process boundary (a worker of a process
        pool) as itself rather than breaking the pool."""
        return _rebuilt, (type(self), self.args), vars(self)


def _rebuilt(kind: type[ValidationError], args: tuple[object, ...]) -> ValidationError:
    """An error of ``kind`` with ``args``, its constructor not called (``__reduce__``)."""
    return kind.__new__(kind, *args)


class MessageError(ValidationError):
    """A wire message could not be decoded into its schema (malformed, misfit or oversize)."""


class TopicError(ValidationError):
    """An MQTT topic is not one of the contract's topics, or names an invalid id."""
