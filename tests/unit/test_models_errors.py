"""Core shapes and the error tree."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

import datasources
from datasources import errors
from datasources.models import DataSourceConfig, DataSourceType, slugify


def test_types_are_an_open_str_enum() -> None:
    assert DataSourceConfig(name="x", type="azure_blob").type is DataSourceType.AZURE_BLOB
    assert DataSourceConfig(name="x", type="my_plugin").type == "my_plugin"
    member: str = DataSourceType.POSTGRESQL  # a str itself: compares equal to its value
    assert member == "postgresql"
    with pytest.raises(ValidationError):
        DataSourceConfig(name="x", type="Has Spaces")


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Sales Data (EU)", "sales-data-eu"),
        ("Ünïcode Straße", "unicode-strae"),
        ("!!!", "source"),
        ("x" * 100, "x" * 64),
    ],
)
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


@pytest.mark.parametrize("bad_id", ["../x", "A", "-x", "x" * 65, "a b"])
def test_ids_are_validated(bad_id: str) -> None:
    with pytest.raises(ValidationError):
        DataSourceConfig(name="x", type="local_folder", id=bad_id)


def test_names_and_tags_are_validated() -> None:
    with pytest.raises(ValidationError):
        DataSourceConfig(name="a\x00b", type="local_folder")
    with pytest.raises(ValidationError):
        DataSourceConfig(name="x", type="local_folder", tags=[""])
    with pytest.raises(ValidationError):
        DataSourceConfig(name="x", type="local_folder", owner="me")  # type: ignore[call-arg]


def test_repr_masks_secret_looking_config(canary: str) -> None:
    config = DataSourceConfig(
        name="x",
        type="postgresql",
        config={"host": "db", "password": canary, "dsn": f"postgresql://u:{canary}@h/d"},
    )
    assert canary not in repr(config) and canary not in str(config)
    assert "db" in repr(config)


def test_error_tree() -> None:
    classes = [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, errors.DataSourceError)
    ]
    assert len(classes) >= 18
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "codes are unique"
    for cls in classes:
        assert cls.__name__ in errors.__doc__ or cls is errors.DataSourceError
        assert cls.__name__ in datasources.__all__
        err = cls()
        assert err.message and str(err) == err.message
    assert issubclass(errors.ReadOnlyError, errors.PermissionDeniedError)
    assert issubclass(errors.UnsafePathError, errors.InvalidInputError)
    assert issubclass(errors.CredentialsUnreadableError, errors.CredentialsError)
    assert errors.UnavailableError.transient and not errors.NotFoundError.transient


def test_configuration_error_from_fields() -> None:
    err = errors.ConfigurationError.from_fields([("host", "required"), ("port", "not a number")])
    assert "host: required" in err.message and "port: not a number" in err.message
    assert err.details["fields"][1] == {"field": "port", "problem": "not a number"}


def test_public_api_is_sorted() -> None:
    assert datasources.__all__ == sorted(datasources.__all__)
    for name in datasources.__all__:
        assert hasattr(datasources, name)
