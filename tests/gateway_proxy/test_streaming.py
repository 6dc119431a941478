"""Bodies stream through the proxy: large uploads and downloads with bounded memory, and a
long-polling request that outlasts 30 seconds."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from .conftest import CHUNK, Gateway, Upstream, pattern, raw

SIZE = 50 * 2**20
# Far below the 50 MiB moved: what the proxy, the upstream and the client hold at once.
MEMORY_BOUND = 8 * 2**20


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def peak_since_reset() -> int:
    return tracemalloc.get_traced_memory()[1]


async def test_large_upload_streams(
    gateway: Gateway, upstream: Upstream, http: aiohttp.ClientSession, traced: None
) -> None:
    block = pattern(CHUNK)
    expected = hashlib.sha256()
    for _ in range(SIZE // CHUNK):
        expected.update(block)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(SIZE // CHUNK):
            yield block

    for chunked in (False, True):
        headers = {} if chunked else {"Content-Length": str(SIZE)}
        tracemalloc.reset_peak()
        async with http.post(
            raw(gateway.url, "/_matrix/media/v3/upload?filename=big.bin"),
            data=body(),
            headers={**headers, "Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            result = await resp.json()
        assert peak_since_reset() < MEMORY_BOUND
        assert result["size"] == SIZE and result["sha256"] == expected.hexdigest()
        # Synapse refuses uploads without a Content-Length: it is passed on as sent.
        assert result["content_length"] == (None if chunked else str(SIZE))
        assert result["chunked"] == ("chunked" if chunked else None)


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_large_download_streams(
    gateway: Gateway, http: aiohttp.ClientSession, traced: None, chunked: str
) -> None:
    block = pattern(CHUNK)
    expected = hashlib.sha256()
    for _ in range(SIZE // CHUNK):
        expected.update(block)
    digest = hashlib.sha256()
    size = 0
    tracemalloc.reset_peak()
    async with http.get(
        raw(gateway.url, f"/_matrix/media/v3/download/test/{SIZE}?chunked={chunked}")
    ) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Length") == (None if chunked == "1" else str(SIZE))
        async for part in resp.content.iter_chunked(CHUNK):
            digest.update(part)
            size += len(part)
    assert peak_since_reset() < MEMORY_BOUND
    assert size == SIZE and digest.hexdigest() == expected.hexdigest()


@pytest.mark.slow
async def test_long_poll_longer_than_30_seconds(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with http.get(raw(gateway.url, "/_matrix/client/v3/sync?timeout=31000&delay=31")) as resp:
        assert resp.status == 200
        assert await resp.json() == {"next_batch": "s1"}
    assert time.monotonic() - started >= 31
