"""The floor of the serving benchmark: the least a Python web service can do to stream a model's answer.

One FastAPI endpoint, ``POST /stream`` with ``{"question": ...}``, asks the paced generator with one shared HTTP
client and relays each token as a Server-Sent Event, then ``done``: no auth, no database, no retrieval, no
framework between the model and the wire. Served by uvicorn in a process of its own, exactly as citechat is, so
the difference between the two is citechat's own work.
"""

import argparse
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from citechat.bench.generator import MODEL


class Ask(BaseModel):
    question: str


def create_app(generator_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with httpx.AsyncClient(base_url=generator_url, timeout=60, limits=limits) as http:
            app.state.http = http
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/stream")
    async def stream(request: Request, body: Ask) -> StreamingResponse:
        http: httpx.AsyncClient = request.app.state.http
        payload = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": body.question}]}

        async def events() -> AsyncIterator[str]:
            async with http.stream("POST", "/v1/chat/completions", json=payload) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choices = json.loads(line[6:])["choices"]
                    if choices and (delta := choices[0]["delta"].get("content")):
                        yield f"event: token\ndata: {json.dumps({'delta': delta})}\n\n"
            yield "event: done\ndata: {}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/healthz")
    async def health() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--generator", required=True, help="The paced generator's URL.")
    args = parser.parse_args()
    uvicorn.run(create_app(args.generator), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
