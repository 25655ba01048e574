"""The schema registry: versions, validation, generation from pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from tenant_notify.errors import ConfigurationError, InvalidEventError
from tenant_notify.events import SchemaRegistry, parse_event, write_schema
from tests.events.conftest import ORDER_CREATED, SCHEMAS, cloudevent, order_data


@pytest.fixture
def registry() -> SchemaRegistry:
    return SchemaRegistry(SCHEMAS)


def event(**attributes: object) -> object:
    return parse_event(json.dumps(cloudevent(**attributes)))  # type: ignore[arg-type]


def test_every_version_of_every_type_is_listed(registry: SchemaRegistry) -> None:
    assert [(s.type, s.version) for s in registry] == [
        (ORDER_CREATED, 1),
        (ORDER_CREATED, 2),
        ("com.example.user.signed_up", 1),
    ]
    assert registry.latest(ORDER_CREATED).version == 2  # type: ignore[union-attr]


def test_an_event_without_dataschema_is_checked_against_the_latest_version(
    registry: SchemaRegistry,
) -> None:
    data = order_data()
    del data["channel"]  # required from v2 on
    with pytest.raises(InvalidEventError, match=r"v2: 'channel' is a required property"):
        registry.validate(event(data=data))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "dataschema",
    [
        "https://shop.example/schemas/com.example.order.created.v1.json",  # its $id
        "https://elsewhere.example/order-created/v1",
        "com.example.order.created.v1.json",
    ],
)
def test_dataschema_picks_the_version(registry: SchemaRegistry, dataschema: str) -> None:
    data = order_data()
    del data["channel"]
    schema = registry.validate(event(data=data, dataschema=dataschema))  # type: ignore[arg-type]
    assert schema.version == 1


def test_a_dataschema_naming_no_version_is_invalid(registry: SchemaRegistry) -> None:
    with pytest.raises(InvalidEventError, match="names no registered version") as caught:
        registry.validate(event(dataschema="https://x.example/v7"))  # type: ignore[arg-type]
    assert caught.value.reason == "schema"


def test_a_failure_names_the_field_but_not_the_value(registry: SchemaRegistry) -> None:
    bad = event(data=order_data(customer_email="jane.example.com"))
    with pytest.raises(InvalidEventError) as caught:
        registry.validate(bad)  # type: ignore[arg-type]
    assert caught.value.field == "data.customer_email"
    assert "'format' \"email\"" in str(caught.value)
    assert "jane" not in str(caught.value)


def test_a_type_without_schema_is_invalid(registry: SchemaRegistry) -> None:
    with pytest.raises(InvalidEventError, match=r"no schema for com\.example\.x"):
        registry.validate(event(type="com.example.x"))  # type: ignore[arg-type]


def test_a_broken_schema_file_fails_when_loaded_naming_it(tmp_path: Path) -> None:
    (tmp_path / "t.v1.json").write_text('{"type": "objekt"}')
    with pytest.raises(ConfigurationError, match=r"t\.v1\.json is not a valid JSON Schema"):
        SchemaRegistry(tmp_path)
    (tmp_path / "t.v1.json").unlink()
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(ConfigurationError, match=r"not named <type>\.v<N>\.json"):
        SchemaRegistry(tmp_path)


def test_a_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not a folder") as caught:
        SchemaRegistry(tmp_path / "nope")
    assert caught.value.key == "events.schemas_dir"


class OrderCreated(pydantic.BaseModel):
    order_id: str
    customer_email: str
    total: float = pydantic.Field(ge=0)


def test_schemas_are_generated_from_pydantic_models_as_new_versions(tmp_path: Path) -> None:
    first = write_schema(tmp_path, ORDER_CREATED, OrderCreated)
    assert first.name == f"{ORDER_CREATED}.v1.json"
    # Unchanged: no new version.
    assert write_schema(tmp_path, ORDER_CREATED, OrderCreated) == first

    class OrderCreatedV2(OrderCreated):
        currency: str

    second = write_schema(tmp_path, ORDER_CREATED, OrderCreatedV2)
    assert second.name == f"{ORDER_CREATED}.v2.json"
    registry = SchemaRegistry(tmp_path)
    assert registry.latest(ORDER_CREATED).version == 2  # type: ignore[union-attr]
    with pytest.raises(InvalidEventError, match="'currency' is a required property"):
        registry.validate(event(data={"order_id": "1", "customer_email": "a@b.c", "total": 1}))  # type: ignore[arg-type]
    v1 = event(
        data={"order_id": "1", "customer_email": "a@b.c", "total": 1},
        dataschema=f"{ORDER_CREATED}.v1.json",
    )
    assert registry.validate(v1).version == 1  # type: ignore[arg-type]
