"""``/api/v1/connector-types``: which kinds of source this service can register, and the
shape of each one's ``config`` (a JSON Schema), so a client can build the form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from datasources.api.routes.datasources import COMMON
from datasources.api.security import CurrentPrincipal
from datasources.config import Settings
from datasources.connectors.sql import SqlConnector
from datasources.errors import DataSourceError
from datasources.registry import DataSourceRegistry

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/connector-types", tags=["data sources"])


class ConnectorType(BaseModel):
    """One connector type."""

    type: str
    title: str = Field(description="The connector's own one-line description.")
    available: bool = Field(description="False when its optional dependency is missing.")
    sql: bool = Field(default=False, description="Whether its sources run SQL queries.")
    secret_fields: list[str] = Field(
        default_factory=list, description="Config fields stored encrypted and always masked."
    )
    config_schema: dict[str, Any] = Field(
        default_factory=dict, description="JSON Schema of the type's config object."
    )
    problem: str | None = Field(default=None, description="Why it is unavailable.")
    operator_fields: list[str] = Field(
        default_factory=list,
        description="Config fields this service refuses from API users (the operator's "
        "choice): forms leave them out.",
    )


def _operator_fields(type_name: str, settings: Settings) -> list[str]:
    """Fields an API user may not set here. The service's own Azure identity is for the
    accounts the operator lists, and for nobody when none is listed."""
    if type_name == "azure_blob" and not settings.ambient_identity_accounts:
        return ["use_default_credential"]
    return []


class ConnectorTypeList(BaseModel):
    items: list[ConnectorType]


@router.get(
    "",
    response_model=ConnectorTypeList,
    summary="Connector types and their config schemas",
    responses=COMMON,
)
async def list_types(request: Request, caller: CurrentPrincipal) -> ConnectorTypeList:
    registry: DataSourceRegistry = request.app.state.registry
    items = []
    for name in registry.available_types():
        try:
            cls = registry.connector_class(name)
        except DataSourceError as exc:
            items.append(ConnectorType(type=name, title=name, available=False, problem=exc.message))
            continue
        doc = (cls.__doc__ or name).strip().splitlines()[0].strip()
        items.append(
            ConnectorType(
                type=name,
                title=doc,
                available=True,
                sql=issubclass(cls, SqlConnector),
                secret_fields=sorted(cls.secret_fields),
                config_schema=cls.config_model.model_json_schema(),
                operator_fields=_operator_fields(name, request.app.state.settings),
            )
        )
    return ConnectorTypeList(items=items)
