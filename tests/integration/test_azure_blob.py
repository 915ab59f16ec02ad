"""The Azure Blob connector against a real Azurite: the contract suite and Azure specifics."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from datasources.connectors.azure_blob import AzureBlobConnector
from datasources.testing.contract import ConnectorContract
from datasources.workspace import Workspace

pytestmark = pytest.mark.integration

ACCOUNT = "devstoreaccount1"


@pytest.fixture
def make_connector(container: Any, azurite: dict[str, str]) -> Callable[..., AzureBlobConnector]:
    def make(read_only: bool = False, **overrides: Any) -> AzureBlobConnector:
        config = {
            "connection_string": azurite["connection_string"],
            "container_name": container.container_name,
            **overrides,
        }
        return AzureBlobConnector(config, source_id="azure-test", read_only=read_only)

    return make


@pytest.fixture
def seed(container: Any) -> Callable[[str, bytes], Awaitable[None]]:
    async def put(path: str, data: bytes) -> None:
        await container.upload_blob(path, data, overwrite=True)

    return put


class TestAzureBlobContract(ConnectorContract):
    @pytest.fixture
    def secret_values(self, azurite: dict[str, str]) -> list[str]:
        return [azurite["key"], azurite["connection_string"]]


# -- auth modes ---------------------------------------------------------------------------


def account_sas(azurite: dict[str, str], permission: str = "rl", hours: float = 1) -> str:
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    return generate_account_sas(
        ACCOUNT,
        azurite["key"],
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions.from_string(permission),
        expiry=datetime.now(UTC) + timedelta(hours=hours),
    )


def container_sas(
    azurite: dict[str, str], container: str, permission: str = "rl", hours: float = 1
) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=azurite["key"],
        permission=ContainerSasPermissions.from_string(permission),
        expiry=datetime.now(UTC) + timedelta(hours=hours),
    )


def auth_configs(azurite: dict[str, str], container: str) -> dict[str, dict[str, Any]]:
    url = azurite["url"]
    return {
        "connection_string": {
            "connection_string": azurite["connection_string"],
            "container_name": container,
        },
        "account_key": {
            "account_url": url,
            "account_key": azurite["key"],
            "container_name": container,
        },
        "account_sas": {
            "account_url": url,
            "sas_token": account_sas(azurite),
            "container_name": container,
        },
        "container_sas_url": {
            "container_sas_url": f"{url}/{container}?{container_sas(azurite, container)}"
        },
        "sas_connection_string": {
            "connection_string": f"BlobEndpoint={url};SharedAccessSignature={account_sas(azurite)}",
            "container_name": container,
        },
    }


@pytest.mark.parametrize(
    "mode",
    [
        "connection_string",
        "account_key",
        "account_sas",
        "container_sas_url",
        "sas_connection_string",
    ],
)
async def test_every_auth_mode_lists_and_fetches(
    mode: str, azurite: dict[str, str], container: Any, tmp_path: Path
) -> None:
    await container.upload_blob("dir/data.csv", b"a,b\n1,2\n")
    config = auth_configs(azurite, container.container_name)[mode]
    async with AzureBlobConnector(config, source_id="s") as connector:
        status = await connector.test_connection()
        assert status.ok, status.message
        assert [i.path for i in await connector.list_items()] == ["dir/data.csv"]
        local = await connector.fetch_data("dir/data.csv", tmp_path / "ws")
        assert local.read_bytes() == b"a,b\n1,2\n"
        shown = repr(connector) + repr(connector.config) + status.model_dump_json()
        assert azurite["key"] not in shown and "sig=" not in shown


async def test_public_container_anonymous(
    azurite: dict[str, str], container: Any, tmp_path: Path
) -> None:
    await container.set_container_access_policy(signed_identifiers={}, public_access="container")
    await container.upload_blob("open.txt", b"hello")
    config = {
        "account_url": azurite["url"],
        "anonymous": True,
        "container_name": container.container_name,
    }
    async with AzureBlobConnector(config) as connector:
        assert (await connector.test_connection()).ok
        assert [i.path for i in await connector.list_items()] == ["open.txt"]
        assert (await connector.fetch_data("open.txt", tmp_path)).read_bytes() == b"hello"


async def test_anonymous_on_a_private_container_is_an_auth_error(
    azurite: dict[str, str], container: Any
) -> None:
    config = {
        "account_url": azurite["url"],
        "anonymous": True,
        "container_name": container.container_name,
    }
    async with AzureBlobConnector(config, source_id="anon") as connector:
        status = await connector.test_connection()
    assert not status.ok
    assert "anonymous access" in status.message


async def test_wrong_key_names_the_mode_never_the_key(
    azurite: dict[str, str], container: Any
) -> None:
    import base64

    wrong = base64.b64encode(b"w" * 64).decode()
    config = {
        "account_url": azurite["url"],
        "account_key": wrong,
        "container_name": container.container_name,
    }
    async with AzureBlobConnector(config, source_id="bad") as connector:
        status = await connector.test_connection()
        assert not status.ok and "account key" in status.message
        assert wrong not in status.model_dump_json()
        from datasources.errors import AuthenticationError

        with pytest.raises(AuthenticationError) as info:
            await connector.list_items()
        assert wrong not in info.value.message


async def test_missing_container(azurite: dict[str, str], tmp_path: Path) -> None:
    from datasources.errors import NotFoundError

    config = {
        "connection_string": azurite["connection_string"],
        "container_name": "no-such-container",
    }
    async with AzureBlobConnector(config, source_id="x") as connector:
        status = await connector.test_connection()
        assert not status.ok and "does not exist" in status.message
        with pytest.raises(NotFoundError):
            await connector.list_items()
        with pytest.raises(NotFoundError):
            await connector.fetch_data("a.csv", tmp_path)


async def test_under_privileged_sas(
    azurite: dict[str, str], container: Any, tmp_path: Path
) -> None:
    from datasources.errors import AuthenticationError, PermissionDeniedError

    await container.upload_blob("a.csv", b"a")
    read_only_sas = container_sas(azurite, container.container_name, "r")
    url = f"{azurite['url']}/{container.container_name}?{read_only_sas}"
    local = tmp_path / "up.csv"
    local.write_bytes(b"x")
    async with AzureBlobConnector({"container_sas_url": url}, source_id="ro") as connector:
        # Reading a named blob works; listing and writing need permissions it lacks.
        assert (await connector.fetch_data("a.csv", tmp_path / "ws")).read_bytes() == b"a"
        with pytest.raises((PermissionDeniedError, AuthenticationError)):
            await connector.list_items()
        with pytest.raises((PermissionDeniedError, AuthenticationError)):
            await connector.upload_data(local, "up.csv")
        status = await connector.test_connection()
        assert not status.ok


async def test_sas_expiry_and_write_warnings(azurite: dict[str, str], container: Any) -> None:
    from datasources import DataSourceRegistry
    from datasources.errors import ConfigurationError

    name = container.container_name
    soon = {
        "account_url": azurite["url"],
        "sas_token": account_sas(azurite, "rwdl", hours=48),
        "container_name": name,
    }
    async with AzureBlobConnector(soon, read_only=True) as connector:
        status = await connector.test_connection()
    assert status.ok
    assert any("expires in 1 days" in w or "expires in 2 days" in w for w in status.warnings), (
        status.warnings
    )
    assert any("allows writes" in w for w in status.warnings)
    expired = {
        "account_url": azurite["url"],
        "sas_token": account_sas(azurite, "rl", hours=-1),
        "container_name": name,
    }
    async with DataSourceRegistry() as registry:
        with pytest.raises(ConfigurationError) as info:
            await registry.register_data_source(
                {"name": "x", "type": "azure_blob", "config": expired}
            )
        assert "expired" in info.value.message and "sig=" not in info.value.message


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"container_name": "abc"}, ["no auth mode"]),
        (
            {
                "connection_string": "x",
                "account_url": "https://a.blob.core.windows.net",
                "account_key": "a2V5",
                "container_name": "abc",
            },
            ["connection_string and account_key"],
        ),
        (
            {
                "account_url": "https://a.blob.core.windows.net",
                "sas_token": "sig=x",
                "anonymous": True,
                "container_name": "abc",
            },
            ["sas_token and anonymous"],
        ),
        ({"account_key": "a2V5", "container_name": "abc"}, ["account_url is required"]),
        ({"account_url": "ftp://x", "anonymous": True, "container_name": "abc"}, ["account_url"]),
        (
            {"account_url": "https://a.blob.core.windows.net", "anonymous": True},
            ["container_name is required"],
        ),
        (
            {
                "account_url": "https://a.blob.core.windows.net",
                "anonymous": True,
                "container_name": "Bad_Name",
            },
            ["container_name"],
        ),
        (
            {
                "account_url": "https://a.blob.core.windows.net",
                "tenant_id": "t",
                "container_name": "abc",
            },
            ["tenant_id"],
        ),
    ],
)
def test_config_errors(config: dict[str, Any], words: list[str]) -> None:
    from datasources.errors import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        AzureBlobConnector.validate_config(config)
    for word in words:
        assert word in info.value.message


@pytest.mark.parametrize(
    ("connection_string", "problems"),
    [
        ("AccountName=a;AccountKey=c2VjcmV0LWtleQ==", []),
        ("AccountName=a", ["AccountKey or SharedAccessSignature is missing"]),
        (
            "AccountKey=c2VjcmV0LWtleQ==",
            ["AccountName is missing", "BlobEndpoint or AccountName is missing"],
        ),
        ("AccountName=a;AccountKey=not*base64!", ["AccountKey is not valid base64"]),
        ("AccountName=a;AccountKey=c2VjcmV0LWtleQ==;SharedAccessSignature=sig=abc", ["both given"]),
        (
            "BlobEndpoint=notaurl;SharedAccessSignature=sig=abc",
            ["BlobEndpoint is not an http(s) URL"],
        ),
        ("garbage", ["not of the form"]),
    ],
)
async def test_connection_string_parsing(connection_string: str, problems: list[str]) -> None:
    from datasources.errors import ConfigurationError

    config = AzureBlobConnector.validate_config(
        {"connection_string": connection_string, "container_name": "abc"}
    )
    if not problems:
        await AzureBlobConnector.check_config(config)
        return
    with pytest.raises(ConfigurationError) as info:
        await AzureBlobConnector.check_config(config)
    for problem in problems:
        assert problem in info.value.message
    assert "c2VjcmV0LWtleQ" not in info.value.message and "abc" not in info.value.message.replace(
        "abc'", ""
    )


async def test_entra_id_modes_build_their_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {
        "account_url": "https://acct.blob.core.windows.net",
        "tenant_id": "tenant",
        "client_id": "client",
        "client_secret": "s3cret-value",
        "container_name": "abc",
    }
    connector = AzureBlobConnector(config)
    await connector.connect()
    try:
        from azure.identity.aio import ClientSecretCredential

        assert isinstance(connector._credential, ClientSecretCredential)
        assert "s3cret-value" not in repr(connector) + repr(connector.config)
    finally:
        await connector.disconnect()
    for var in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(var, raising=False)
    default = AzureBlobConnector(
        {
            "account_url": "https://acct.blob.core.windows.net",
            "use_default_credential": True,
            "container_name": "abc",
        }
    )
    await default.connect()
    try:
        from azure.identity.aio import DefaultAzureCredential

        assert isinstance(default._credential, DefaultAzureCredential)
    finally:
        await default.disconnect()


# -- hostile names, changes, integrity ----------------------------------------------------


# The SDK's HTTP client folds '..' out of URLs, so most of these cannot even be created;
# Azurite turns backslashes into slashes, which is how '../' names get stored.
HOSTILE_BLOBS = [
    "../../x",
    "a/../../x",
    "..\\..\\y",
    "a\\..\\..\\w",
    "..\\chat10\\v",
    "%2E%2E/z",
    "a/./b",
]


async def test_hostile_blob_names_never_escape(
    make_connector: Callable[..., AzureBlobConnector], container: Any, tmp_path: Path
) -> None:
    from azure.core.exceptions import HttpResponseError

    accepted = []
    for name in HOSTILE_BLOBS:
        try:
            await container.upload_blob(name, b"evil")
            accepted.append(name)
        except HttpResponseError:
            pass  # the emulator refuses some names outright
    assert len(accepted) >= 3, accepted
    await container.upload_blob("good/ok.txt", b"ok")
    workspace = tmp_path / "chat1"
    async with make_connector() as connector:
        listed = [i.path for i in await connector.list_items()]
        assert "good/ok.txt" in listed
        assert any(p.startswith("../") for p in listed), listed
        for name in listed:
            if name == "good/ok.txt":
                continue
            try:
                local = await connector.fetch_data(name, workspace)
            except Exception as exc:
                from datasources.errors import DataSourceError

                assert isinstance(exc, DataSourceError)
            else:
                assert local.is_relative_to(workspace.resolve()), name
        report = await connector.fetch_prefix("", workspace)
        assert "good/ok.txt" in report.fetched
        assert {f.path for f in report.failed} >= {
            n for n in listed if ".." in n.replace("\\", "/").split("/")
        }
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(workspace)]  # noqa: ASYNC240
    assert outside == [], outside


async def test_blob_overwritten_between_listing_and_fetch(
    make_connector: Callable[..., AzureBlobConnector], container: Any, tmp_path: Path
) -> None:
    await container.upload_blob("v.txt", b"version one")
    async with make_connector() as connector:
        listed = await connector.list_items()
        await container.upload_blob("v.txt", b"version two!", overwrite=True)
        local = await connector.fetch_data("v.txt", tmp_path)
        assert local.read_bytes() == b"version two!"
        entry = Workspace(tmp_path).lookup("v.txt")
        assert entry is not None and entry.etag != listed[0].etag


async def test_corrupted_content_md5_is_refused(
    make_connector: Callable[..., AzureBlobConnector], container: Any, tmp_path: Path
) -> None:
    from azure.storage.blob import ContentSettings

    from datasources.errors import IntegrityError

    blob = container.get_blob_client("c.bin")
    await blob.upload_blob(b"payload" * 1000)
    await blob.set_http_headers(ContentSettings(content_md5=bytearray(b"\x00" * 16)))
    async with make_connector() as connector:
        with pytest.raises(IntegrityError):
            await connector.fetch_data("c.bin", tmp_path / "ws")
    assert not (tmp_path / "ws" / "c.bin").exists()
    assert not list((tmp_path / "ws" / ".datasources" / "tmp").iterdir())


async def test_metadata_listing_and_directories(
    make_connector: Callable[..., AzureBlobConnector], container: Any, tmp_path: Path
) -> None:
    local = tmp_path / "report.parquet"
    local.write_bytes(os.urandom(3000))
    async with make_connector() as connector:
        item = await connector.upload_data(local, "y/report.parquet", metadata={"owner": "ana"})
        assert item.content_type == "application/vnd.apache.parquet"
        assert item.metadata == {"owner": "ana"}
        listed = (await connector.list_items("y/"))[0]
        assert listed.metadata == {"owner": "ana"} and listed.size == 3000 and listed.etag
        page = await connector.list_page(delimiter="/", limit=10)
        assert [(i.path, i.kind) for i in page.items] == [("y/", "directory")]


async def test_round_trip_large_binary_with_raised_limit(
    make_connector: Callable[..., AzureBlobConnector], tmp_path: Path
) -> None:
    import hashlib

    from datasources.errors import LimitExceededError

    size = 100 * 1024 * 1024 + 4097
    local = tmp_path / "big.bin"
    with open(local, "wb") as fh:  # noqa: ASYNC230 - test set-up
        block = os.urandom(1024 * 1024)
        for _ in range(100):
            fh.write(block)
        fh.write(os.urandom(4097))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    async with make_connector(chunk_size=16 * 1024 * 1024) as connector:
        await connector.upload_data(local, "big/big.bin")
        with pytest.raises(LimitExceededError):
            await connector.fetch_data("big/big.bin", tmp_path / "ws")
    assert not (tmp_path / "ws" / "big").exists()
    async with make_connector(max_download_bytes=None, chunk_size=16 * 1024 * 1024) as connector:
        fetched = await connector.fetch_data("big/big.bin", tmp_path / "ws")
    assert fetched.stat().st_size == size
    entry = __import__("datasources").Workspace(tmp_path / "ws").lookup("big/big.bin")
    assert entry is not None and entry.sha256 == digest


# -- fault injection: a private emulator this test may stop (tests/servers.py) ----------------


async def test_emulator_stopped_mid_download_then_started_again(tmp_path: Path) -> None:
    import asyncio

    from azure.storage.blob.aio import BlobServiceClient

    from datasources.errors import UnavailableError
    from tests.servers import private_azurite

    payload = os.urandom(48 * 1024 * 1024)
    async with private_azurite() as emulator:

        async def seed() -> None:
            service = BlobServiceClient.from_connection_string(emulator.connection_string)
            async with service:
                container = service.get_container_client("faults")
                if not await container.exists():
                    await container.create_container()
                await container.upload_blob("big.bin", payload, overwrite=True, max_concurrency=4)

        await seed()
        config = {
            "connection_string": emulator.connection_string,
            "container_name": "faults",
            "max_download_bytes": None,
            "chunk_size": 1024 * 1024,
            "max_concurrency": 2,
            "timeout": 5,
        }
        workspace = tmp_path / "ws"
        async with AzureBlobConnector(config, source_id="faulty") as connector:
            stopping: list[asyncio.Task[None]] = []

            def progress(done: int, total: int | None) -> None:
                if done > 8 * 1024 * 1024 and not stopping:
                    stopping.append(asyncio.get_running_loop().create_task(emulator.stop()))

            with pytest.raises(UnavailableError) as info:
                await connector.fetch_data("big.bin", workspace, progress=progress)
            assert (
                "stopped answering" in info.value.message
                or "cannot be reached" in info.value.message
            )
            assert stopping, "the emulator was never stopped"
            await stopping[0]
            assert not (workspace / "big.bin").exists()
            assert list((workspace / ".datasources" / "tmp").iterdir()) == []

            await emulator.start()
            await seed()  # the emulator may not have kept what it had in memory
            local = await connector.fetch_data("big.bin", workspace)
            assert local.read_bytes() == payload


async def test_iteration_holds_one_page_at_a_time(
    make_connector: Callable[..., AzureBlobConnector], container: Any, tmp_path: Path
) -> None:
    import asyncio

    await asyncio.gather(*(container.upload_blob(f"p/{i:03d}.txt", b"x") for i in range(45)))
    connector = make_connector()
    connector.list_page_size = 10  # type: ignore[misc]
    requests = 0
    original = connector._list_request

    async def counting(*args: Any) -> bytes:
        nonlocal requests
        requests += 1
        return await original(*args)

    connector._list_request = counting  # type: ignore[method-assign,assignment]
    async with connector:
        iterator = connector.iter_items("p/")
        first = [await anext(iterator) for _ in range(10)]
        assert [i.path for i in first] == [f"p/{i:03d}.txt" for i in range(10)]
        assert requests <= 2  # this page and, at most, the next one requested ahead
        rest = [item async for item in iterator]
        assert len(rest) == 35 and requests == 5
        empty = tmp_path / "empty.bin"
        empty.write_bytes(b"")
        item = await connector.upload_data(empty, "zero/empty.bin")
        assert item.size == 0
        assert (await connector.fetch_data("zero/empty.bin", tmp_path / "ws")).read_bytes() == b""
