"""Errors cross process boundaries (a pool's worker raises, the parent reports) as themselves."""

from __future__ import annotations

import pickle

import pytest

from citybrain.cloud.routing import UnreachableError
from citybrain.cloud.state import RefusedError
from citybrain.models.errors import MessageError, TopicError, ValidationError
from citybrain.models.settings import SettingsError


@pytest.mark.parametrize(
    "error",
    [
        ValidationError("route", "route does not belong to this graph"),
        MessageError("payload", "not JSON"),
        TopicError("topic", "unknown kind"),
        UnreachableError("destination_link", "no route"),
        RefusedError("stale", "time", "older than the last message"),
        SettingsError("cloud.toml", "broker.port", "expected an integer"),
    ],
)
def test_an_error_survives_pickling_with_its_fields(error: ValidationError) -> None:
    back = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, as a pool passes them
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert vars(back) == vars(error)
