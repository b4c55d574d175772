"""The codec: malformed, misfit and oversize payloads become MessageError naming the field."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citybrain.models.codec import DEFAULT_CODEC, DEFAULT_MAX_PAYLOAD_BYTES, Codec
from citybrain.models.errors import MessageError, ValidationError
from citybrain.models.messages import (
    ApproachState,
    CorridorIntersection,
    CorridorRequest,
    CorridorStatus,
    GreenWindow,
    IntervalStep,
    Message,
    PlanAck,
    Presence,
    SignalPlan,
    Status,
    Telemetry,
    VehiclePosition,
)

MESSAGE_TYPES: list[type[Message]] = [
    Telemetry,
    Status,
    SignalPlan,
    PlanAck,
    VehiclePosition,
    CorridorRequest,
    CorridorStatus,
]

TELEMETRY = Telemetry(
    intersection="i-1",
    controller_time=1234.5,
    seq=42,
    approaches=tuple(
        ApproachState(approach=f"a{i}", queue_veh=float(i), occupancy=0.5, flow_vph=600.0)
        for i in range(3)
    ),
)
TELEMETRY_JSON = DEFAULT_CODEC.encode(TELEMETRY)
STATUS = Status(intersection="i-1", presence=Presence.ONLINE, software_version="1.0")


def _big_telemetry(approaches: int = 64) -> Telemetry:
    return Telemetry(
        intersection="i-1",
        controller_time=1.0,
        seq=1,
        approaches=tuple(
            ApproachState(approach=f"a{i}", queue_veh=1.5, occupancy=0.5, flow_vph=900.0)
            for i in range(approaches)
        ),
    )


def _telemetry_with(**fields: Any) -> bytes:
    document = json.loads(TELEMETRY_JSON)
    document.update(fields)
    return json.dumps(document).encode()


def _refused(payload: bytes | bytearray | memoryview, kind: type[Message] = Telemetry) -> str:
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(payload, kind)
    assert info.value.reason
    return info.value.field


# --- MessageError ---------------------------------------------------------------------------


def test_message_error_is_a_validation_error() -> None:
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(b"{", Telemetry)
    assert isinstance(info.value, ValidationError)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("$: ")


# --- not JSON -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal", [b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"nan", b"0x10", b"01", b"+1"]
)
def test_non_json_numbers_are_invalid_json(literal: bytes) -> None:
    payload = TELEMETRY_JSON.replace(b'"controller_time":1234.5', b'"controller_time":' + literal)
    assert payload != TELEMETRY_JSON
    assert _refused(payload) == "$"


def test_python_json_nan_is_refused() -> None:
    # json.dumps writes NaN literally by default: that is not JSON.
    assert _refused(_telemetry_with(controller_time=float("nan"))) == "$"


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"123e999999"])
def test_out_of_range_numbers_name_the_field(number: bytes) -> None:
    payload = TELEMETRY_JSON.replace(b'"controller_time":1234.5', b'"controller_time":' + number)
    assert _refused(payload) == "$.controller_time"


def test_out_of_range_number_in_a_nested_struct() -> None:
    payload = TELEMETRY_JSON.replace(b'"queue_veh":1.0', b'"queue_veh":1e400')
    assert payload != TELEMETRY_JSON
    assert _refused(payload) == "$.approaches[1].queue_veh"


def test_every_truncation_is_refused_as_invalid_json() -> None:
    for cut in range(len(TELEMETRY_JSON)):
        assert _refused(TELEMETRY_JSON[:cut]) == "$", cut


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b" ",
        TELEMETRY_JSON + b"x",
        TELEMETRY_JSON + TELEMETRY_JSON,
        b"{'intersection': 'i-1'}",
        b'{"intersection":"i-1",}',
        b"\xef\xbb\xbf" + TELEMETRY_JSON,
    ],
)
def test_malformed_json_is_refused(payload: bytes) -> None:
    assert _refused(payload) == "$"


# --- JSON that does not fit the schema ------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"seq": "42"}, "$.seq"),
        ({"seq": 4.5}, "$.seq"),
        ({"seq": True}, "$.seq"),
        ({"seq": None}, "$.seq"),
        ({"controller_time": "1234.5"}, "$.controller_time"),
        ({"controller_time": False}, "$.controller_time"),
        ({"intersection": ["i-1"]}, "$.intersection"),
        ({"intersection": 1}, "$.intersection"),
        ({"v": "1"}, "$.v"),
        ({"v": 1.0}, "$.v"),
        ({"mode": 1}, "$.mode"),
        ({"approaches": {}}, "$.approaches"),
        ({"approaches": [1]}, "$.approaches[0]"),
        ({"signals": []}, "$.signals"),
        ({"phase": 3}, "$.phase"),
    ],
)
def test_wrong_types_name_the_field(fields: dict[str, Any], path: str) -> None:
    assert _refused(_telemetry_with(**fields)) == path


def test_wrong_type_deep_in_a_list() -> None:
    document = json.loads(TELEMETRY_JSON)
    document["approaches"][2]["occupancy"] = "half"
    assert _refused(json.dumps(document).encode()) == "$.approaches[2].occupancy"


@pytest.mark.parametrize("payload", [b"[]", b"1", b'"telemetry"', b"null", b"true"])
@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_top_level_must_be_an_object(payload: bytes, kind: type[Message]) -> None:
    assert _refused(payload, kind) == "$"


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_empty_object_misses_required_fields(kind: type[Message]) -> None:
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(b"{}", kind)
    assert info.value.field == "$"
    assert "missing required field" in info.value.reason


def test_unsupported_schema_version() -> None:
    assert _refused(_telemetry_with(v=2)) == "$.v"
    assert _refused(_telemetry_with(v=0)) == "$.v"


def test_field_path_points_into_the_offending_struct() -> None:
    document = json.loads(TELEMETRY_JSON)
    document["approaches"][2]["queue_veh"] = -1
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(json.dumps(document).encode(), Telemetry)
    assert "approaches[2]" in info.value.field
    assert "queue_veh" in info.value.field
    assert info.value.field == "$.approaches[2].queue_veh"


# --- size limits ----------------------------------------------------------------------------


def test_default_limit_is_64_kib() -> None:
    assert DEFAULT_MAX_PAYLOAD_BYTES == 64 * 1024
    assert DEFAULT_CODEC.max_payload_bytes == 64 * 1024


def test_payload_at_the_limit_decodes_and_one_byte_more_does_not() -> None:
    padded = TELEMETRY_JSON + b" " * (DEFAULT_MAX_PAYLOAD_BYTES - len(TELEMETRY_JSON))
    assert len(padded) == DEFAULT_MAX_PAYLOAD_BYTES
    assert DEFAULT_CODEC.decode(padded, Telemetry) == TELEMETRY
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(padded + b" ", Telemetry)
    assert info.value.field == "$"
    assert "limit" in info.value.reason


@pytest.mark.parametrize("size", [65 * 1024, 1024 * 1024])
def test_oversize_payload_is_refused_before_parsing(size: int) -> None:
    # Valid JSON, but too big: the size is checked first.
    payload = TELEMETRY_JSON + b" " * (size - len(TELEMETRY_JSON))
    assert _refused(payload) == "$"
    assert _refused(b"x" * size) == "$"


def test_oversize_limit_applies_to_bytearray_and_memoryview() -> None:
    payload = TELEMETRY_JSON + b" " * (65 * 1024)
    assert _refused(bytearray(payload)) == "$"
    assert _refused(memoryview(payload)) == "$"


def test_bytearray_and_memoryview_decode() -> None:
    assert DEFAULT_CODEC.decode(bytearray(TELEMETRY_JSON), Telemetry) == TELEMETRY
    assert DEFAULT_CODEC.decode(memoryview(TELEMETRY_JSON), Telemetry) == TELEMETRY


def test_smaller_limit_codec() -> None:
    codec = Codec(max_payload_bytes=2048)
    assert codec.max_payload_bytes == 2048
    assert codec.decode(TELEMETRY_JSON, Telemetry) == TELEMETRY
    with pytest.raises(MessageError) as info:
        codec.decode(TELEMETRY_JSON + b" " * 2048, Telemetry)
    assert info.value.field == "$"


@pytest.mark.parametrize("limit", [1023, 1, 0, -1])
def test_codec_refuses_limits_under_1024(limit: int) -> None:
    with pytest.raises(ValidationError) as info:
        Codec(max_payload_bytes=limit)
    assert info.value.field == "max_payload_bytes"


def test_codec_accepts_a_limit_of_1024() -> None:
    codec = Codec(max_payload_bytes=1024)
    assert codec.decode(codec.encode(STATUS), Status) == STATUS


def test_encode_refuses_messages_over_the_limit() -> None:
    message = _big_telemetry()
    payload = DEFAULT_CODEC.encode(message)
    assert len(payload) > 1024
    assert Codec(max_payload_bytes=len(payload)).encode(message) == payload
    with pytest.raises(MessageError) as info:
        Codec(max_payload_bytes=len(payload) - 1).encode(message)
    assert info.value.field == "$"
    with pytest.raises(MessageError):
        Codec(max_payload_bytes=1024).encode(message)


def test_a_large_legitimate_message_fits_the_default_limit() -> None:
    message = _big_telemetry(64)
    assert DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(message), Telemetry) == message


# --- decoder reuse --------------------------------------------------------------------------


def test_one_decoder_per_type_is_built_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[type[Any]] = []
    real_decoder = msgspec.json.Decoder

    def counting_decoder(kind: type[Any], *args: Any, **kwargs: Any) -> Any:
        built.append(kind)
        return real_decoder(kind, *args, **kwargs)

    monkeypatch.setattr(msgspec.json, "Decoder", counting_decoder)
    codec = Codec()
    status_json = codec.encode(STATUS)
    for _ in range(3):
        assert codec.decode(TELEMETRY_JSON, Telemetry) == TELEMETRY
        assert codec.decode(status_json, Status) == STATUS
        with pytest.raises(MessageError):
            codec.decode(b"{}", Telemetry)
    assert built == [Telemetry, Status]


# --- fuzzing: anything either decodes to a valid message or raises MessageError -------------


def _decodes_or_refuses(payload: bytes, kind: type[Message]) -> None:
    refusal: MessageError | None = None
    try:
        message = DEFAULT_CODEC.decode(payload, kind)
    except MessageError as error:
        refusal = error
    if refusal is not None:
        assert refusal.field.startswith("$")
        assert refusal.reason
        return
    assert type(message) is kind
    assert DEFAULT_CODEC.decode(DEFAULT_CODEC.encode(message), kind) == message


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_message_error(payload: bytes, kind: type[Message]) -> None:
    _decodes_or_refuses(payload, kind)


def _field_names() -> list[str]:
    kinds: list[type[msgspec.Struct]] = [
        *MESSAGE_TYPES,
        ApproachState,
        IntervalStep,
        GreenWindow,
        CorridorIntersection,
    ]
    names: set[str] = set()
    for kind in kinds:
        names |= {field.name for field in msgspec.structs.fields(kind)}
    return sorted(names)


_keys = st.sampled_from(_field_names()) | st.text(max_size=4)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=70)
    | st.sampled_from(["i-1", "g1", "green", "normal", "priority", "release", "rejected", "online"])
)
_json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)
_documents = st.dictionaries(_keys, _json_values, max_size=10)


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(MESSAGE_TYPES), document=_documents, versioned=st.booleans())
def test_arbitrary_json_objects_decode_or_raise_message_error(
    kind: type[Message], document: dict[str, Any], versioned: bool
) -> None:
    if versioned:
        document["v"] = 1
    _decodes_or_refuses(json.dumps(document).encode(), kind)


# --- known bugs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        pytest.param(
            b'{"intersection":"i-1","presence":"online","software_version":"1.0\xff"}',
            Status,
            id="status-0xff",
        ),
        pytest.param(
            b'{"intersection":"\xc3(","controller_time":1,"seq":1}',
            Telemetry,
            id="telemetry-bad-continuation",
        ),
        pytest.param(
            b'{"vehicle":"v","time":0,"link":"\xed\xa0\x80","offset_m":0,"speed_mps":0}',
            VehiclePosition,
            id="position-utf8-encoded-surrogate",
        ),
    ],
)
def test_invalid_utf8_in_a_string_is_a_message_error(payload: bytes, kind: type[Message]) -> None:
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(payload, kind)
    assert info.value.field.startswith("$")


def test_deeply_nested_unknown_field_is_a_message_error() -> None:
    depth = 2000
    payload = (
        b'{"extra":' + b"[" * depth + b"]" * depth + b',"intersection":"i-1","presence":"online"}'
    )
    assert len(payload) < DEFAULT_MAX_PAYLOAD_BYTES
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(payload, Status)
    assert info.value.field == "$"


def test_size_limit_counts_bytes_of_a_wide_memoryview() -> None:
    payload = DEFAULT_CODEC.encode(STATUS) + b" " * (70 * 1024)
    payload += b" " * (-len(payload) % 8)
    view = memoryview(payload).cast("Q")
    assert view.nbytes > DEFAULT_MAX_PAYLOAD_BYTES
    with pytest.raises(MessageError) as info:
        DEFAULT_CODEC.decode(view, Status)
    assert info.value.field == "$"


def test_unencodable_text_is_refused_as_a_validation_error() -> None:
    try:
        message = Status(intersection="i-1", presence=Presence.ONLINE, software_version="1.0\udcff")
    except ValidationError:
        return  # refused at construction: fine
    with pytest.raises(ValidationError):
        DEFAULT_CODEC.encode(message)
