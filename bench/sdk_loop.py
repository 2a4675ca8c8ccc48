"""The official SDK, plainly: AsyncAnthropic / AsyncOpenAI, max_retries=0, streaming.

usage: sdk_loop.py anthropic|openai BASE_URL N CONCURRENCY OUT

Default clients, as a user would write it: ``https://`` URLs trust ``SSL_CERT_FILE``
(the SDKs' httpx reads it), connection limits are the SDKs' own.
"""

from __future__ import annotations

import asyncio
import sys

import orjson


async def main() -> None:
    kind, base, n, conc, out = (
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
    )
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    f = open(out, "wb")  # noqa: ASYNC230
    if kind == "anthropic":
        import anthropic

        client = anthropic.AsyncAnthropic(api_key="k", base_url=base, max_retries=0)
    else:
        import openai

        client = openai.AsyncOpenAI(api_key="k", base_url=base + "/v1", max_retries=0)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            prompt = f"Question {i}: what is {i} + {i}?"
            parts = []
            if kind == "anthropic":
                async with client.messages.stream(  # type: ignore[union-attr]
                    model="m", max_tokens=100, messages=[{"role": "user", "content": prompt}]
                ) as stream:
                    async for text in stream.text_stream:
                        parts.append(text)
            else:
                stream = await client.chat.completions.create(  # type: ignore[union-attr]
                    model="m",
                    max_tokens=100,
                    stream=True,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": prompt}],
                )
                async for chunk in stream:
                    for c in chunk.choices:
                        if c.delta.content:
                            parts.append(c.delta.content)
            f.write(orjson.dumps({"id": i, "output": "".join(parts)}) + b"\n")

    async with client:
        await asyncio.gather(*(worker() for _ in range(conc)))
    f.close()


asyncio.run(main())
