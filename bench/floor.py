"""The floor: a bare aiohttp loop: stream, parse SSE with orjson, write a line. Nothing more.

usage: floor.py anthropic|openai BASE_URL N CONCURRENCY OUT [chunks]

It reads the stream a line at a time (``async for line in resp.content``), the
obvious aiohttp loop; with ``chunks`` it reads whole chunks and splits them on
blank lines, as llmbatch does. Each response is read to its end (past ``[DONE]``)
so its connection goes back to the pool; ``https://`` URLs trust ``SSL_CERT_FILE``
(aiohttp's default context).
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import orjson


async def main() -> None:
    kind, base, n, conc, out = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
    )
    chunks = sys.argv[6:7] == ["chunks"]
    if kind == "anthropic":
        url = base + "/v1/messages"
        headers = {
            "authorization": "Bearer k",
            "anthropic-version": "2026-10-21",
            "content-type": "application/json",
        }
    else:
        url = base + "/v1/chat/completions"
        headers = {"authorization": "Bearer k", "content-type": "application/json"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    f = open(out, "wb")  # noqa: ASYNC230 - the floor writes synchronously, as we do
    connector = aiohttp.TCPConnector(limit=conc + 4)
    async with aiohttp.ClientSession(connector=connector) as session:

        def take(data: bytes, parts: list[str]) -> None:
            if data == b"[DONE]":
                return  # read on to the end: the connection is reused
            obj = orjson.loads(data)
            if kind == "anthropic":
                if obj.get("type") == "content_block_delta":
                    parts.append(obj["delta"].get("text", ""))
            else:
                for c in obj.get("choices") or ():
                    t = (c.get("delta") or {}).get("content")
                    if t:
                        parts.append(t)

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {
                    "model": "m",
                    "max_tokens": 100,
                    "stream": True,
                    "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
                }
                if kind == "openai":
                    body["stream_options"] = {"include_usage": True}
                parts: list[str] = []
                async with session.post(url, data=orjson.dumps(body), headers=headers) as resp:
                    if chunks:
                        rest = b""
                        async for chunk in resp.content.iter_any():
                            *events, rest = (rest + chunk).split(b"\n\n")
                            for event in events:
                                for line in event.split(b"\n"):
                                    if line.startswith(b"data:"):
                                        take(line[5:].strip(), parts)
                    else:
                        async for line in resp.content:
                            if line.startswith(b"data:"):
                                take(line[5:].strip(), parts)
                f.write(orjson.dumps({"id": i, "output": "".join(parts)}) + b"\n")

        await asyncio.gather(*(worker() for _ in range(conc)))
    f.close()


asyncio.run(main())
