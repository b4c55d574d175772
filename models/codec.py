"""One JSON encoder and one decoder per message type per process, with a payload size limit.

Every decoding failure becomes a ``MessageError`` whose ``field`` is a JSON path such as
``$.approaches[2].queue_veh``, so the rejecting process can log and count exactly what was wrong.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from citybrain.models.errors import MessageError, ValidationError
from citybrain.models.messages import Message

DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024
"""Larger than any legitimate message (a 256-step plan is about 20 KiB), small enough to refuse
a flood before parsing it."""

M = TypeVar("M", bound=Message)

_AT_PATH = re.compile(r"^(?P<text>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


class Codec:
    """Encodes messages to JSON bytes and decodes bytes into a named message type."""

    def __init__(self, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        if max_payload_bytes < 1024:
            raise ValidationError("max_payload_bytes", "must be at least 1024 bytes")
        self.max_payload_bytes = max_payload_bytes
        self._encoder = msgspec.json.Encoder()
        self._decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}

    def encode(self, message: Message) -> bytes:
        try:
            payload = self._encoder.encode(message)
        except UnicodeEncodeError as error:
            raise MessageError(
                "$", f"text that cannot be encoded as UTF-8: {error.reason}"
            ) from None
        if len(payload) > self.max_payload_bytes:
            raise MessageError(
                "$",
                f"encoded message is {len(payload)} bytes, over the {self.max_payload_bytes} limit",
            )
        return payload

    def decode(self, payload: bytes | bytearray | memoryview, kind: type[M]) -> M:
        """Decode ``payload`` as ``kind`` or raise ``MessageError`` naming the offending field."""
        size = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        if size > self.max_payload_bytes:
            raise MessageError(
                "$", f"payload is {size} bytes, over the {self.max_payload_bytes} limit"
            )
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.json.Decoder(kind)
        try:
            message: M = decoder.decode(payload)
        except msgspec.ValidationError as error:
            raise message_error(error) from None
        except msgspec.DecodeError as error:
            raise MessageError("$", f"not valid JSON: {error}") from None
        except UnicodeDecodeError as error:
            raise MessageError("$", f"text is not valid UTF-8: {error.reason}") from None
        except RecursionError:
            raise MessageError("$", "JSON nested too deeply") from None
        return message


def message_error(error: msgspec.ValidationError) -> MessageError:
    """Turn msgspec's ``<text> - at `$.a[0]``` into a field path and a reason."""
    match = _AT_PATH.match(str(error))
    path = (match.group("path") if match else None) or "$"
    cause = error.__cause__
    if isinstance(cause, ValidationError):
        # Our own __post_init__ check: its field is relative to the struct at `path`.
        return MessageError(f"{path}.{cause.field}", cause.reason)
    text = match.group("text") if match else str(error)
    return MessageError(path, text)


DEFAULT_CODEC = Codec()
"""The process-wide codec; make another only for a different size limit."""
