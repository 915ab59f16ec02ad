"""The local folder's listing is lazy: folders are read as the iteration reaches them, a
batch at a time, so the first item arrives before the whole tree has been walked."""

from __future__ import annotations

from pathlib import Path

from datasources.connectors import local_folder
from datasources.connectors.local_folder import LocalFolderConnector


async def test_a_file_made_after_the_first_item_is_still_listed(tmp_path: Path) -> None:
    batch = local_folder._BATCH
    (tmp_path / "a").mkdir()
    for i in range(batch + 100):  # more than one batch before the iteration reaches "b"
        (tmp_path / "a" / f"{i:05d}.txt").write_bytes(b"x")
    (tmp_path / "b").mkdir()  # empty when the listing starts
    async with LocalFolderConnector({"root": str(tmp_path)}) as connector:
        iterator = connector.iter_items()
        first = await anext(iterator)
        # Made after the first item was handed out: an eager listing has already
        # walked the tree and cannot see it; a lazy one has not read "b" yet.
        (tmp_path / "b" / "late.txt").write_bytes(b"late")
        rest = [item.path async for item in iterator]
    assert first.path == "a/00000.txt"
    assert rest[-1] == "b/late.txt"
    assert len(rest) == batch + 100
