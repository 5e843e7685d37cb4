"""The same batch as the node runs, made with Python asyncio and aiohttp:
N streamed Ollama /api/chat calls, at most C at once (a semaphore), each
reply read line by line to its final object. Prints items per second.

usage: aiohttp_batch.py BASE_URL N C [MODEL]
"""
import asyncio
import json
import sys
import time

import aiohttp


async def one(session, url, sem, i, model, results):
    body = {"model": model, "stream": True, "options": {"num_predict": 16},
            "messages": [{"role": "user", "content": f"prompt number {i}"}]}
    async with sem:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                results[i] = None
                return
            text = []
            async for line in resp.content:
                if not line.strip():
                    continue
                chunk = json.loads(line)
                text.append(chunk.get("message", {}).get("content", ""))
                if chunk.get("done"):
                    results[i] = ("".join(text), chunk.get("eval_count", 0))
                    return
            results[i] = None


async def main():
    base, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = sys.argv[4] if len(sys.argv) > 4 else "test-model"
    url = base + "/api/chat"
    sem = asyncio.Semaphore(c)
    results = [None] * n
    connector = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(session, url, sem, i, model, results) for i in range(n)))
        secs = time.perf_counter() - start
    ok = sum(1 for r in results if r is not None)
    print(f"aiohttp items={n} done={ok} wall_s={secs:.3f} items_per_s={n / secs:.0f}")


asyncio.run(main())
