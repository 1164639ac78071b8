"""All configuration in one place: environment variables prefixed ``CITECHAT_`` and an optional ``.env`` file."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from citechat.pipeline.pricing import DEFAULT_PRICES


class Settings(BaseSettings):
    """Settings of one citechat process. Every field is documented in the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="CITECHAT_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL >= 14 URL (postgresql+asyncpg://...). Unset: an embedded PostgreSQL in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".citechat"),
        description="Where the embedded PostgreSQL and the generated auth secret live.",
    )
    auth_secret: SecretStr | None = Field(
        default=None,
        description="HS256 secret for bearer tokens. Embedded mode generates one in data_dir when unset.",
    )
    auth_jwks_url: str | None = Field(default=None, description="JWKS URL whose RS256/ES256 keys verify bearer tokens.")
    auth_audience: str | None = Field(default=None, description="When set, tokens must carry this `aud` claim.")
    auth_issuer: str | None = Field(default=None, description="When set, tokens must carry this `iss` claim.")
    serve_host: str | None = Field(
        default=None,
        description="Interface `citechat serve` binds (it sets this itself); loopback enables development tokens.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed to call the API from a browser.",
    )
    db_pool_size: int = Field(
        default=20,
        ge=1,
        description="Database connections kept open per process: three quarters for answering's statements, the "
        "rest for everything else, which may overflow by as many as this again (closed when returned, so a pool "
        "smaller than the busiest moment reconnects under load).",
    )
    prompts_dir: Path = Field(
        default=Path(__file__).resolve().parents[1] / "prompts",
        description="Folder of the prompt templates (prompts/ in the repository).",
    )

    retriever: Literal["local", "ragie"] | None = Field(
        default=None, description="Retrieval backend; unset: ragie when RAGIE_API_KEY is set, else local."
    )
    llm: Literal["extractive", "openai", "openai-compatible", "local"] = Field(
        default="extractive",
        description="What writes answers: extractive (no model), openai, openai-compatible, local.",
    )
    local_model: Path | None = Field(default=None, description="GGUF file run in-process when CITECHAT_LLM=local.")
    local_threads: int = Field(default=1, ge=1, description="CPU threads of the local model.")
    llm_model: str | None = Field(default=None, description="Default model (openai: gpt-4o; required otherwise).")
    llm_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated models a request may choose (default: the default model)."
    )
    llm_base_url: str | None = Field(default=None, description="Base URL of an OpenAI-compatible server (.../v1).")
    llm_api_key: SecretStr | None = Field(default=None, description="API key of the OpenAI-compatible server.")
    llm_timeout_s: float = Field(default=60, gt=0, description="Timeout of one model request, in seconds.")
    llm_context_window: int = Field(default=8192, ge=512, description="Context window of the compatible model.")
    strict_min_similarity: float = Field(
        default=0.3, ge=-1, le=1, description="Strict mode answers only from passages at least this similar."
    )
    retrieval_top_k: int = Field(default=5, ge=1, le=100, description="Passages retrieved per question.")
    retrieval_timeout_s: float = Field(
        default=10, gt=0, description="An answer fails (retryably) when retrieval takes longer than this."
    )
    max_upload_mb: float = Field(default=50, gt=0, description="Largest accepted upload, in MiB (413 above).")
    embedding_model: Literal["minilm", "openai"] = Field(
        default="minilm",
        description="Local index embeddings: offline MiniLM (ONNX, int8) or OpenAI text-embedding-3-small at 384 dims.",
    )
    embedding_threads: int = Field(default=2, ge=1, description="CPU threads of the offline embedding model.")
    chunk_size: int = Field(default=200, ge=32, le=2048, description="Target chunk length in tokens.")
    chunk_overlap: int = Field(default=0, ge=0, le=512, description="Tokens shared by neighbouring chunks.")
    ratelimit_user_per_hour: int = Field(default=50, ge=1, description="Messages one user may send per rolling hour.")
    ratelimit_org_per_day: int = Field(
        default=1000, ge=1, description="Messages one organization may send per rolling day."
    )
    ratelimit_storage: str | None = Field(
        default=None,
        pattern=r"^async\+[a-z0-9+]+://",
        description="A `limits` async storage URI (async+redis://host:6379) shared across hosts; unset: PostgreSQL.",
    )
    ingest_concurrency: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Documents indexed at once: one's parsing and storing overlap another's embedding.",
    )
    trace_content: bool = Field(
        default=False,
        description="Put questions, passages and answers into trace spans (never on by default: they are user data).",
    )
    slo_end_to_end_ms: float = Field(default=5000, gt=0, description="Target P95 of a whole answer, in ms.")
    slo_retrieval_ms: float = Field(default=500, gt=0, description="Target P95 of retrieval, in ms.")
    slo_condense_ms: float = Field(default=1000, gt=0, description="Target P95 of condensing a follow-up, in ms.")
    slo_ttft_ms: float = Field(default=2000, gt=0, description="Target P95 of the time to the first token, in ms.")
    slo_generation_ms: float = Field(default=4000, gt=0, description="Target P95 of generation, in ms.")
    slo_error_rate: float = Field(default=0.05, ge=0, le=1, description="Target share of answers that fail.")
    slo_cost_per_message_usd: float = Field(default=0.05, ge=0, description="Target average cost of an answer.")
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "CITECHAT_OPENAI_API_KEY"),
        description="OpenAI key (OPENAI_API_KEY): OpenAI embeddings and generation.",
    )
    openai_base_url: str | None = Field(default=None, description="Base URL of the OpenAI API (proxies, gateways).")
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per million input and output tokens of each model, for cost estimates (JSON object).",
    )
    ragie_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RAGIE_API_KEY", "CITECHAT_RAGIE_API_KEY"),
        description="Ragie key (RAGIE_API_KEY); when set, Ragie is the default retrieval backend.",
    )
    ragie_base_url: str | None = Field(default=None, description="Ragie API base URL (default: Ragie's own).")
    ragie_rerank: bool = Field(default=True, description="Ask Ragie to rerank retrieved chunks.")
    ragie_max_chunks_per_document: int | None = Field(
        default=None, ge=1, description="At most this many chunks of one document per Ragie retrieval."
    )
    ragie_timeout_s: float = Field(default=20, gt=0, description="Timeout of one Ragie request, in seconds.")
    ragie_poll_interval_s: float = Field(default=2, gt=0, description="How often an upload's Ragie status is checked.")
    ragie_ingest_timeout_s: float = Field(
        default=1800, gt=0, description="How long Ragie may take to index one document before it counts as failed."
    )

    @field_validator("cors_origins", "llm_models", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def retrieval_backend(self) -> Literal["local", "ragie"]:
        if self.retriever is not None:
            return self.retriever
        return "ragie" if self.ragie_api_key is not None else "local"

    @property
    def embedded_database(self) -> bool:
        """True when citechat runs its own PostgreSQL instead of connecting to one."""
        return self.database_url is None
