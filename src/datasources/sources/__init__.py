"""The registry's parts, one concern per module.

| module | owns |
|---|---|
| ``connector_types`` | the connector class of a type: built-ins, entry points, install hints |
| ``state`` | what a registry and its owner-scoped views share |
| ``core`` | resolving a source, its public (masked) form, building its connector |
| ``listing`` | an owner's listing, cached briefly and dropped on every local write |
| ``crud`` | registering, changing, testing and removing sources; rotating secrets |

:class:`datasources.registry.DataSourceRegistry` puts them together with the live
connectors of :mod:`datasources.lifecycle`.
"""
