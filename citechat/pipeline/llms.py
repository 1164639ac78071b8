"""The model that writes answers (``CITECHAT_LLM``): which models it serves, and a fresh LLM per request.

The LLMs of one provider share one HTTP client (``LLMProvider.http``, closed with the runtime): a client of their
own would build a TLS context (tens of ms of CPU, the CA bundle read again) and open a new connection per answer.

- ``extractive`` (default, needs nothing): answers with sentences taken from the sources (``extractive.py``).
- ``openai``: OpenAI's API with ``OPENAI_API_KEY``; the models offered are a setting (``CITECHAT_LLM_MODELS``).
- ``openai-compatible``: any server speaking OpenAI's chat API (vLLM, Ollama, llama.cpp server) at
  ``CITECHAT_LLM_BASE_URL``.
- ``local``: a GGUF file (``CITECHAT_LOCAL_MODEL``) served in-process by llama.cpp (``local_model.py``), then
  used exactly like ``openai-compatible``.
"""

import functools
from dataclasses import dataclass

import httpx
from llama_index.core.llms import LLM
from pydantic import PrivateAttr

from citechat.errors import CitechatError, ConfigurationError
from citechat.pipeline.extractive import ExtractiveLLM
from citechat.settings import Settings

EXTRACTIVE = "extractive"


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
            return _metered(_openai_class())(
                model=model,
                temperature=temperature,
                api_key=s.openai_api_key.get_secret_value(),
                api_base=s.openai_base_url,
                timeout=s.llm_timeout_s,
                max_retries=2,
                additional_kwargs=_USAGE,
                async_http_client=self.http,
            )
        return _metered(_openai_like_class())(
            model=model,
            temperature=temperature,
            api_base=self.base_url,
            api_key=s.llm_api_key.get_secret_value() if s.llm_api_key else "unused",
            is_chat_model=True,
            context_window=s.llm_context_window,
            timeout=s.llm_timeout_s,
            max_retries=2,
            additional_kwargs=_USAGE,
            async_http_client=self.http,
        )

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()


# Ask for token usage on streamed answers (LlamaIndex drops the option from calls that do not stream).
_USAGE = {"stream_options": {"include_usage": True}}


def _openai_class():
    from llama_index.llms.openai import OpenAI

    return OpenAI


def _openai_like_class():
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike


@functools.cache  # one class per base: making a pydantic model class costs milliseconds
def _metered(base: type[LLM]) -> type[LLM]:
    """``base`` recording the token usage the provider reports on a streamed answer, in ``usage``.

    The chat engine hands the pipeline plain text, not the provider's final chunk that carries the usage; an LLM is
    made per request, so recording it on the instance is safe.
    """

    class Metered(base):
        _usage: dict = PrivateAttr(default_factory=dict)

        @property
        def usage(self) -> dict:
            return self._usage

        async def astream_chat(self, messages, **kwargs):
            stream = await super().astream_chat(messages, **kwargs)

            async def metered():
                async for response in stream:
                    if response.additional_kwargs.get("total_tokens"):
                        self._usage = dict(response.additional_kwargs)
                    yield response

            return metered()

    Metered.__name__ = f"Metered{base.__name__}"
    return Metered


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
    """The client the OpenAI SDK would make itself (its timeouts, connection limits and redirects)."""
    from openai import DefaultAsyncHttpxClient

    return DefaultAsyncHttpxClient()


def describe_failure(exc: Exception) -> tuple[str, bool] | None:
    """(what to tell the user, whether retrying may help) for a provider's error; None when it is not one."""
    try:
        import openai
    except ImportError:  # pragma: no cover - openai comes with llama-index-llms-openai
        return None
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return "the language model rejected the configured API key", False
    if isinstance(exc, openai.RateLimitError):
        return "the language model is rate limiting requests; try again shortly", True
    if isinstance(exc, openai.APITimeoutError):
        return "the language model did not answer in time; try again", True
    if isinstance(exc, openai.APIConnectionError):
        return "the language model could not be reached; try again shortly", True
    if isinstance(exc, openai.InternalServerError):
        return "the language model failed; try again", True
    if isinstance(exc, openai.APIStatusError):
        return f"the language model refused the request ({exc.status_code})", False
    if isinstance(exc, openai.APIError):  # an error event inside a stream that had begun
        return "the language model failed mid-answer; try again", True
    return None
