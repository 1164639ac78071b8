"""``CITECHAT_LLM=local``: a GGUF model run in-process by llama.cpp (the prebuilt ``xllamacpp`` wheel, the
``local`` extra), serving OpenAI's chat API on a loopback port that the ``openai-compatible`` client then uses."""

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from citechat.errors import ConfigurationError
from citechat.settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def local_model_server(settings: Settings) -> AsyncIterator[str]:
    """Starts llama.cpp's server on 127.0.0.1 for the configured GGUF; yields its base URL (``.../v1``)."""
    path = settings.local_model
    if path is None or not path.is_file():
        raise ConfigurationError(f"CITECHAT_LLM=local needs CITECHAT_LOCAL_MODEL, a GGUF file (got {path})")
    try:
        import xllamacpp
    except ImportError as exc:
        raise ConfigurationError("CITECHAT_LLM=local needs the `local` extra: uv sync --extra local") from exc
    server = await asyncio.to_thread(_start, xllamacpp, path, settings)
    log.info("local model %s serving at %s", path.name, server.listening_address)
    try:
        yield server.listening_address + "/v1"
    finally:
        del server  # llama.cpp's server stops when its object goes


def _start(xllamacpp, path: Path, settings: Settings):
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = settings.llm_context_window
    params.cpuparams.n_threads = settings.local_threads
    params.cpuparams_batch.n_threads = settings.local_threads
    params.hostnames = ["127.0.0.1"]
    params.port = _free_port()
    return xllamacpp.Server(params)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
