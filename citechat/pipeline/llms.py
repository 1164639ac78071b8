"""The model that writes answers (``CITECHAT_LLM``): which models it serves, and a fresh LLM per request.

Every model provider gets a ``ChatCompletionsLLM`` (``chat_completions.py``), which speaks OpenAI's Chat Completions
wire format itself: LlamaIndex's ``OpenAI``/``OpenAILike`` go through the ``openai`` SDK, and a streamed 200-token
answer cost 22.5 ms of CPU that way against 5.7 ms this way (about 110 against 28 µs per token, measured on a
loopback stream). The LLMs of one provider share one HTTP client (``LLMProvider.http``, closed with the runtime): a
client of their own would build a TLS context (tens of ms of CPU, the CA bundle read again) and open a new
connection per answer.

- ``extractive`` (default, needs nothing): answers with sentences taken from the sources (``extractive.py``).
- ``openai``: OpenAI's API with ``OPENAI_API_KEY``; the models offered are a setting (``CITECHAT_LLM_MODELS``).
- ``openai-compatible``: any server speaking OpenAI's chat API (vLLM, Ollama, llama.cpp server) at
  ``CITECHAT_LLM_BASE_URL``.
- ``local``: a GGUF file (``CITECHAT_LOCAL_MODEL``) served in-process by llama.cpp (``local_model.py``), then
  used exactly like ``openai-compatible``.
"""

from dataclasses import dataclass

import httpx
from llama_index.core.llms import LLM

from citechat.errors import CitechatError, ConfigurationError
from citechat.pipeline.chat_completions import OPENAI_API_BASE, ChatCompletionsLLM
from citechat.pipeline.extractive import ExtractiveLLM
from citechat.settings import Settings

EXTRACTIVE = "extractive"
OPENAI_CONTEXT_WINDOW = 128_000  # gpt-4o, gpt-4o-mini, gpt-4.1 and later


class UnavailableModel(CitechatError):
    status_code = 422


@dataclass(frozen=True)
class LLMProvider:
    name: str
    models: tuple[str, ...]
    default_model: str
    settings: Settings
    base_url: str | None = None  # where an OpenAI-compatible server listens (set for openai-compatible and local)
    http: httpx.AsyncClient | None = None  # shared by this provider's LLMs (None for the extractive answerer)

    def choose(self, requested: str | None) -> str:
        model = requested or self.default_model
        if model not in self.models:
            raise UnavailableModel(f"model {model!r} is not available; available: {', '.join(self.models)}")
        return model

    def create(self, model: str, temperature: float) -> LLM:
        s = self.settings
        if self.name == EXTRACTIVE:
            return ExtractiveLLM()
        if self.name == "openai":
            api_base, key = s.openai_base_url or OPENAI_API_BASE, s.openai_api_key
            context_window = OPENAI_CONTEXT_WINDOW
        else:
            api_base, key, context_window = self.base_url, s.llm_api_key, s.llm_context_window
        return ChatCompletionsLLM(
            http=self.http,
            model=model,
            temperature=temperature,
            api_base=api_base,
            api_key=key.get_secret_value() if key else "unused",  # a compatible server may want no key at all
            timeout_s=s.llm_timeout_s,
            max_retries=2,
            context_window=context_window,
        )

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()


def provider_from_settings(settings: Settings, *, local_base_url: str | None = None) -> LLMProvider:
    """``local_base_url``: where the local model's server listens, when ``CITECHAT_LLM=local``."""
    if settings.llm == "local":
        name = settings.local_model.stem
        return LLMProvider("local", (name,), name, settings, base_url=local_base_url, http=_http_client())
    if settings.llm == EXTRACTIVE:
        return LLMProvider(EXTRACTIVE, (EXTRACTIVE,), EXTRACTIVE, settings)
    if settings.llm == "openai":
        if settings.openai_api_key is None:
            raise ConfigurationError("CITECHAT_LLM=openai needs OPENAI_API_KEY")
        models = tuple(settings.llm_models or ["gpt-4o", "gpt-4o-mini"])
        return LLMProvider("openai", models, settings.llm_model or models[0], settings, http=_http_client())
    if not settings.llm_base_url or not settings.llm_model:
        raise ConfigurationError("CITECHAT_LLM=openai-compatible needs CITECHAT_LLM_BASE_URL and CITECHAT_LLM_MODEL")
    models = tuple(settings.llm_models or [settings.llm_model])
    return LLMProvider(
        "openai-compatible", models, settings.llm_model, settings, base_url=settings.llm_base_url, http=_http_client()
    )


def _http_client() -> httpx.AsyncClient:
    """The connection pool of a provider's LLMs: the OpenAI SDK's limits, no redirects; every request sets its own
    timeout (``CITECHAT_LLM_TIMEOUT_S``)."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100), follow_redirects=False
    )
