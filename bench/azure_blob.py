"""Azure Blob benchmark against Azurite: our connector vs the raw SDK, adlfs and obstore.

Every case runs in its own process (peak RSS and CPU-seconds are its own, counted after
the imports) and writes downloads to disk, as a fetch into a workspace does; the
contenders of each group run interleaved in rotating order. Azurite's own CPU per case
is read from ``/proc``. Sizes: BENCH_AZURE_SIZES_MB (downloads), BENCH_AZURE_UPLOAD_MB,
BENCH_AZURE_BLOBS (listing).
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import ProcCpu, Run, paired, ratio_text, spread, values, verdict

SIZES_MB = harness.sized("BENCH_AZURE_SIZES_MB", "256", "32")
UPLOAD_MB = harness.size("BENCH_AZURE_UPLOAD_MB", 128, 16)
BLOBS = harness.size("BENCH_AZURE_BLOBS", 10000, 1000)
SLOW_MAX_MB = 256  # the default SDK and adlfs (about 100 MB/s) only up to this size
CONTAINER = "bench"
LIST_PREFIX = f"many{BLOBS}/"


def _env() -> tuple[str, str, str]:
    cs = os.environ["DATASOURCES_TEST_AZURITE_CONNECTION_STRING"]
    url = os.environ["DATASOURCES_TEST_AZURITE_URL"]
    key = cs.split("AccountKey=", 1)[1].split(";", 1)[0]
    return cs, url, key


def _ours_config(**extra: Any) -> dict[str, Any]:
    cs, _url, _key = _env()
    return {
        "connection_string": cs,
        "container_name": CONTAINER,
        "max_download_bytes": None,
        **extra,
    }


# -- download cases --------------------------------------------------------------------------


async def download_ours(blob: str, dest: Path) -> None:
    from datasources.connectors.azure_blob import AzureBlobConnector

    async with AzureBlobConnector(_ours_config()) as connector:
        await connector.fetch_data(blob, dest)


async def download_ours_nondurable(blob: str, dest: Path) -> None:
    from datasources.connectors.azure_blob import AzureBlobConnector
    from datasources.workspace import Workspace

    async with AzureBlobConnector(_ours_config()) as connector:
        await connector.fetch_data(blob, Workspace(dest, durable=False))


async def download_sdk_default(blob: str, dest: Path) -> None:
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(_env()[0]) as service:
        stream = await service.get_blob_client(CONTAINER, blob).download_blob()
        with open(dest / "out.bin", "wb") as fh:  # noqa: ASYNC230 - as people write it
            await stream.readinto(fh)


async def download_sdk_tuned(blob: str, dest: Path) -> None:
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(
        _env()[0], max_single_get_size=64 * 1024 * 1024, max_chunk_get_size=32 * 1024 * 1024
    ) as service:
        stream = await service.get_blob_client(CONTAINER, blob).download_blob(max_concurrency=8)
        with open(dest / "out.bin", "wb") as fh:  # noqa: ASYNC230
            await stream.readinto(fh)


async def download_adlfs(blob: str, dest: Path) -> None:
    import adlfs

    fs = adlfs.AzureBlobFileSystem(connection_string=_env()[0], asynchronous=True)
    await fs._get_file(f"{CONTAINER}/{blob}", str(dest / "out.bin"))
    await fs.close_session(None, fs.service_client) if hasattr(fs, "close_session") else None


def _obstore() -> Any:
    from obstore.store import AzureStore

    key = _env()[2]
    return AzureStore(CONTAINER, account_name="devstoreaccount1", access_key=key, use_emulator=True)


async def download_obstore(blob: str, dest: Path, sync: bool = False) -> None:
    import obstore

    result = await obstore.get_async(_obstore(), blob)
    with open(dest / "out.bin", "wb") as fh:  # noqa: ASYNC230
        async for chunk in result.stream(min_chunk_size=8 * 1024 * 1024):
            fh.write(chunk)
        if sync:
            fh.flush()
            os.fsync(fh.fileno())


async def download_obstore_fsync(blob: str, dest: Path) -> None:
    await download_obstore(blob, dest, sync=True)


# -- upload cases ----------------------------------------------------------------------------


async def upload_ours(local: Path, blob: str) -> None:
    from datasources.connectors.azure_blob import AzureBlobConnector

    async with AzureBlobConnector(_ours_config(chunk_size=8 * 1024 * 1024)) as connector:
        await connector.upload_data(local, blob, overwrite=True)


async def upload_sdk_tuned(local: Path, blob: str) -> None:
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(_env()[0]) as service:
        with open(local, "rb") as fh:  # noqa: ASYNC230
            await service.get_blob_client(CONTAINER, blob).upload_blob(
                fh, overwrite=True, max_concurrency=8
            )


async def upload_obstore(local: Path, blob: str) -> None:
    import obstore

    await obstore.put_async(_obstore(), blob, local)


# -- listing cases ---------------------------------------------------------------------------


async def list_ours() -> int:
    from datasources.connectors.azure_blob import AzureBlobConnector

    count = 0
    async with AzureBlobConnector(_ours_config()) as connector:
        async for _item in connector.iter_items(LIST_PREFIX):
            count += 1
    return count


async def list_sdk_blobs() -> int:
    from azure.storage.blob.aio import BlobServiceClient

    count = 0
    async with BlobServiceClient.from_connection_string(_env()[0]) as service:
        async for _blob in service.get_container_client(CONTAINER).list_blobs(
            name_starts_with=LIST_PREFIX, include=["metadata"]
        ):
            count += 1
    return count


async def list_sdk_names() -> int:
    from azure.storage.blob.aio import BlobServiceClient

    count = 0
    async with BlobServiceClient.from_connection_string(_env()[0]) as service:
        async for _name in service.get_container_client(CONTAINER).list_blob_names(
            name_starts_with=LIST_PREFIX
        ):
            count += 1
    return count


async def list_obstore() -> int:
    import obstore

    count = 0
    async for batch in obstore.list(_obstore(), LIST_PREFIX, chunk_size=5000):
        count += len(batch)
    return count


async def list_adlfs() -> int:
    import adlfs

    fs = adlfs.AzureBlobFileSystem(connection_string=_env()[0], asynchronous=True)
    found = await fs._find(f"{CONTAINER}/{LIST_PREFIX}")
    return len(found)


CASES = {
    name: fn
    for name, fn in globals().items()
    if name.startswith(("download_", "upload_", "list_")) and callable(fn)
}


def curl(blob: str, dest: Path) -> None:
    """curl fetching the blob to /dev/null: what the emulator serves with nothing written."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    _cs, url, key = _env()
    sas = generate_blob_sas(
        "devstoreaccount1",
        CONTAINER,
        blob,
        account_key=key,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    subprocess.run(
        ["curl", "-sf", "-o", "/dev/null", f"{url}/{CONTAINER}/{blob}?{sas}"], check=True
    )


def child_case(case: str, arg: str, work: str) -> int:
    if case == "curl":
        curl(arg, Path(work))
        return 0
    fn = CASES[case]
    if case.startswith("download_"):
        asyncio.run(fn(arg, Path(work)))
        return 0
    if case.startswith("upload_"):
        asyncio.run(fn(Path(arg), f"up/{case}.bin"))
        return 0
    count: int = asyncio.run(fn())
    assert count == BLOBS, count
    return count


def _imports(case: str) -> list[str]:
    """What a service would have imported already, for this case alone."""
    if "ours" in case:
        return ["datasources.connectors.azure_blob", "datasources.workspace"]
    if "obstore" in case:
        return ["obstore", "obstore.store"]
    if "adlfs" in case:
        return ["adlfs"]
    return ["azure.storage.blob", "azure.storage.blob.aio"]


def _azurite(cmdline: str) -> bool:
    return "azurite" in cmdline and "node" in cmdline


def _one(case: str, *, arg: str, server: bool) -> Run:
    with tempfile.TemporaryDirectory(dir=harness.SCRATCH) as work:
        emulator = ProcCpu(_azurite, interval=None)
        with emulator:
            result = harness.run_child("bench.azure_blob", case, arg, work)
    if server and emulator.seconds is not None and "error" not in result:
        result["azurite_cpu_s"] = emulator.seconds
    return result


async def prepare(local_files: dict[int, Path]) -> None:
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(_env()[0]) as service:
        container = service.get_container_client(CONTAINER)
        if not await container.exists():
            await container.create_container()
        for size_mb, path in local_files.items():
            blob = container.get_blob_client(f"big-{size_mb}.bin")
            if not await blob.exists():
                with open(path, "rb") as fh:  # noqa: ASYNC230
                    await blob.upload_blob(fh, overwrite=True, max_concurrency=8)
        existing = 0
        async for _ in container.list_blob_names(name_starts_with=LIST_PREFIX):
            existing += 1
        if existing < BLOBS:
            semaphore = asyncio.Semaphore(32)

            async def put(i: int) -> None:
                async with semaphore:
                    await container.upload_blob(
                        f"{LIST_PREFIX}{i // 1000:03d}/b{i:06d}.csv",
                        b"x",
                        overwrite=True,
                        metadata={"n": str(i)},
                    )

            await asyncio.gather(*(put(i) for i in range(BLOBS)))


def _random_file(path: Path, size_mb: int) -> Path:
    with open(path, "wb") as fh:
        block = os.urandom(4 * 2**20)
        for _ in range(max(size_mb // 4, 1)):
            fh.write(block)
    return path


DOWNLOADS = [
    "download_ours",
    "download_ours_nondurable",
    "download_obstore",
    "download_obstore_fsync",
    "download_sdk_tuned",
    "download_sdk_default",
    "download_adlfs",
    "curl",
]
UPLOADS = ["upload_ours", "upload_sdk_tuned", "upload_obstore"]
# adlfs lists through the SDK's list_blobs, whose row is here; list_adlfs stays runnable
# (BENCH_AZURE_LISTS) but is left out by default to keep the run near 15 minutes.
LISTS = os.environ.get(
    "BENCH_AZURE_LISTS", "list_ours,list_sdk_blobs,list_sdk_names,list_obstore"
).split(",")


def run() -> dict[str, Any]:
    harness.SCRATCH.mkdir(parents=True, exist_ok=True)
    server = harness.server_visible(_azurite)
    out: dict[str, Any] = {
        "config": {
            "sizes_mb": SIZES_MB,
            "upload_mb": UPLOAD_MB,
            "blobs": BLOBS,
            "slow_max_mb": SLOW_MAX_MB,
            "azurite_cpu": server,
        },
        "download": {},
    }
    with tempfile.TemporaryDirectory(dir=harness.SCRATCH) as tmp:
        local = {mb: _random_file(Path(tmp) / f"big-{mb}.bin", mb) for mb in SIZES_MB}
        upload = _random_file(Path(tmp) / "upload.bin", UPLOAD_MB)
        print(f"  preparing Azurite (blobs and a {BLOBS}-blob listing)", flush=True)
        asyncio.run(prepare(local))
        for mb in SIZES_MB:
            names = [
                n
                for n in DOWNLOADS
                if mb <= SLOW_MAX_MB or n not in ("download_sdk_default", "download_adlfs")
            ]
            out["download"][str(mb)] = harness.interleave(
                names,
                functools.partial(_one, arg=f"big-{mb}.bin", server=server),
                label=f"{mb} MiB ",
            )
        out["upload"] = harness.interleave(
            UPLOADS, functools.partial(_one, arg=str(upload), server=server), label="upload "
        )
    out["list"] = harness.interleave(
        LISTS, functools.partial(_one, arg="", server=server), label="list "
    )
    return out


# -- rendering --------------------------------------------------------------------------------

DURABILITY = {
    "download_ours": "fsync, atomic rename",
    "download_ours_nondurable": "no fsync (`durable=False`), atomic rename",
    "download_obstore": "no fsync",
    "download_obstore_fsync": "fsync",
    "download_sdk_tuned": "no fsync",
    "download_sdk_default": "no fsync",
    "download_adlfs": "no fsync",
    "curl": "nothing written (/dev/null)",
}
LABELS = {
    "download_ours": "**ours** `fetch_data` (SHA-256/MD5 verified, manifest)",
    "download_ours_nondurable": "**ours** `fetch_data`, `durable=False`",
    "download_obstore": "obstore `get_async` stream → file",
    "download_obstore_fsync": "obstore `get_async` stream → file + fsync",
    "download_sdk_tuned": "azure-storage-blob aio, `max_concurrency=8`, 64/32 MiB gets",
    "download_sdk_default": "azure-storage-blob aio, defaults",
    "download_adlfs": "adlfs `_get_file`",
    "curl": "ceiling: curl to /dev/null, one stream",
    "upload_ours": "**ours** `upload_data`",
    "upload_sdk_tuned": "azure-storage-blob aio `upload_blob`, `max_concurrency=8`",
    "upload_obstore": "obstore `put_async`",
    "list_ours": "**ours** `iter_items` (size, type, MD5, ETag, metadata)",
    "list_sdk_blobs": "SDK `list_blobs(include=['metadata'])` (the same fields)",
    "list_sdk_names": "SDK `list_blob_names` (names only)",
    "list_obstore": "obstore `list` (no content type, MD5 or metadata)",
    "list_adlfs": "adlfs `_find`",
}


def _mbps(mb: float) -> Any:
    return lambda r: mb * 2**20 / 1e6 / float(r["seconds"])


def targets(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for mb in res["config"]["sizes_mb"]:
        runs = res["download"][str(mb)]
        rate = _mbps(mb)
        for ours, alt, note in (
            ("download_ours_nondurable", "download_obstore", "no fsync on either side"),
            ("download_ours", "download_obstore_fsync", "fsync on both sides"),
        ):
            vs = paired(runs[ours], runs[alt], rate)
            ok = harness.median(vs)
            rows.append(
                [
                    f"download {mb} MiB blob to a workspace ({note})",
                    spread(values(runs[ours], rate), 0, "MB/s"),
                    f"obstore{' + fsync' if 'fsync' in alt else ''} "
                    f"{spread(values(runs[alt], rate), 0, 'MB/s')}",
                    ratio_text(vs),
                    "≥ 1.0x",
                    verdict(None if ok is None else ok >= 1.0),
                ]
            )
    n = res["config"]["blobs"]
    lst = res["list"]

    def per_s(r: Run) -> float:
        return int(n) / float(r["seconds"])

    vs = paired(lst["list_ours"], lst["list_obstore"], per_s)
    ok = harness.median(vs)
    rows.append(
        [
            f"list {n:,} blobs with metadata",
            spread(values(lst["list_ours"], per_s), 0, "/s"),
            f"obstore {spread(values(lst['list_obstore'], per_s), 0, '/s')}",
            ratio_text(vs),
            "≥ 1.0x",
            verdict(None if ok is None else ok >= 1.0),
        ]
    )
    return rows


def _table(
    runs: dict[str, list[Run]], ours: str, rate: Any, unit: str, gib: float, extra: str = ""
) -> list[str]:
    lines = [
        f"| contender | {'durability | ' if extra else ''}{unit} | "
        f"{'CPU-s per GiB' if gib else 'CPU-s'} | Azurite CPU-s "
        f"| peak RSS growth | {ours.split('_', 1)[1]} vs it |",
        f"|---|{'---|' if extra else ''}---|---|---|---|---|",
    ]
    order = [n for n in LABELS if n in runs]
    for name in order:
        r = runs[name]
        error = harness.first_error(r)
        if not values(r, "seconds"):
            lines.append(f"| {LABELS[name]} | failed: {error} |")
            continue
        cpu = values(r, "cpu_s")
        lines.append(
            f"| {LABELS[name]} | {DURABILITY[name] + ' | ' if extra else ''}"
            f"{spread(values(r, rate))} | {spread(cpu, 2, scale=1 / gib if gib else 1.0)} | "
            f"{spread(values(r, 'azurite_cpu_s'), 1)} | "
            f"{spread(values(r, 'growth_kib'), 1, 'MiB', 1 / 1024)} | "
            f"{'-' if name == ours else ratio_text(paired(runs[ours], r, rate))} |"
        )
    return lines


def render(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = [
        "## Azure Blob (`bench/azure_blob.py`, against Azurite)",
        "",
        harness.describe_run(res),
        "",
        "Every case in its own process; downloads land on disk. Azurite is one Node.js "
        "process on the same two cores as the client (and, on a shared machine, serving "
        "other clients too), so every figure is bounded by the emulator; *Azurite CPU-s* "
        "is the emulator's CPU during the case, from `/proc`"
        + ("" if cfg["azurite_cpu"] else " (not visible in this run)")
        + f". The default SDK and adlfs run only up to {cfg['slow_max_mb']} MiB. *CPU-s per "
        "GiB* is the client process's.",
        "",
    ]
    prose: list[str] = []
    for mb in cfg["sizes_mb"]:
        runs = res["download"][str(mb)]
        rate = _mbps(mb)
        lines += [f"Download a {mb} MiB blob, MB/s:", ""]
        lines += _table(runs, "download_ours", rate, "MB/s", mb / 1024, extra="durability")
        lines.append("")
        nd = paired(runs["download_ours_nondurable"], runs["download_obstore"], rate)
        du = paired(runs["download_ours"], runs["download_obstore_fsync"], rate)
        curl = harness.median(values(runs["curl"], rate))
        best = max(
            (n for n in runs if n not in ("curl",) and not n.startswith("download_ours")),
            key=lambda n: harness.median(values(runs[n], rate)) or 0.0,
        )
        prose.append(
            f"At {mb} MiB: ours without fsync ran at {ratio_text(nd)} of obstore without "
            f"fsync, ours with fsync at {ratio_text(du)} of obstore with fsync; the fastest "
            f"alternative was {LABELS[best]}; curl to /dev/null reached "
            f"{harness.fmt(curl)} MB/s."
        )
    up = res["upload"]
    lines += [f"Upload a {cfg['upload_mb']} MiB file, MB/s:", ""]
    lines += _table(up, "upload_ours", _mbps(cfg["upload_mb"]), "MB/s", cfg["upload_mb"] / 1024)
    lines.append("")
    n = cfg["blobs"]

    def per_s(r: Run) -> float:
        return int(n) / float(r["seconds"])

    lst = res["list"]
    lines += [f"List {n:,} blobs (100-ish folders), blobs/s:", ""]
    lines += _table(lst, "list_ours", per_s, "blobs/s", 0)
    like = paired(lst["list_ours"], lst["list_sdk_blobs"], per_s)
    up_rates = {k: harness.median(values(v, _mbps(cfg["upload_mb"]))) for k, v in up.items()}
    up_lo = min(v for v in up_rates.values() if v) if any(up_rates.values()) else 0
    up_hi = max(v for v in up_rates.values() if v) if any(up_rates.values()) else 0
    lines += [
        "",
        " ".join(prose),
        f"Uploads ran between {up_lo:,.0f} and {up_hi:,.0f} MB/s (medians) for every client. "
        "The listing row compares what `list_items` returns (size, content type, MD5, ETag "
        "and user metadata) with listings that fetch less (obstore and `list_blob_names`); "
        f"against the SDK call that returns the same fields ours ran at {ratio_text(like)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        harness.child_main(
            {c: (lambda *a, c=c: child_case(c, *a)) for c in [*CASES, "curl"]},
            {c: _imports(c) for c in [*CASES, "curl"]},
        )
    else:
        sys.exit("run it as: BENCH=azure_blob make bench")
