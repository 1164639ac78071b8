"""Keeping user text out of LlamaIndex's spans when content tracing is off.

OpenInference hides the prompts, messages and documents its ``TraceConfig`` knows about, but not everything LlamaIndex
hands it: prompt-template variables (the passages, the history) pass through. So its spans are exported with an
allow-list of attributes that cannot carry text (span kind, model, token counts, document ids and scores), whatever
a later version adds. Filtering happens as spans are exported, with the SDK's public ``ReadableSpan``.
"""

import re

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor

LLAMA_INDEX_SCOPE = "openinference.instrumentation.llama_index"
SAFE_ATTRIBUTE = re.compile(
    r"openinference\.span\.kind|session\.id|exception\.(type|escaped)"
    r"|llm\.(model_name|provider|system|invocation_parameters|finish_reason|token_count\.[a-z_.]+)"
    r"|embedding\.model_name|reranker\.(model_name|top_k)|retrieval\.documents\.\d+\.document\.(id|score)"
)


class WithoutContent(SpanProcessor):
    """``inner``, receiving LlamaIndex's spans with only the attributes ``SAFE_ATTRIBUTE`` allows."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        scope = span.instrumentation_scope
        self._inner.on_end(_content_free(span) if scope and scope.name == LLAMA_INDEX_SCOPE else span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _content_free(span: ReadableSpan) -> ReadableSpan:
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_safe(span.attributes),
        events=[Event(e.name, _safe(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def _safe(attributes) -> dict:
    return {key: value for key, value in (attributes or {}).items() if SAFE_ATTRIBUTE.fullmatch(key)}
