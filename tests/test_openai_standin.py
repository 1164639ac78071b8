"""The OpenAI stand-in speaks OpenAI's wire format: the official `openai` SDK and LlamaIndex's clients work with it."""

from collections.abc import AsyncIterator

import openai
import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI
from llama_index.llms.openai_like import OpenAILike

from tests.standins.openai import DEFAULT_ANSWER, OpenAIStandIn

pytestmark = pytest.mark.usefixtures("fresh_standin")
KEY = "sk-standin-test-key"


@pytest.fixture
async def client(standin: OpenAIStandIn) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


MESSAGES = [
    {"role": "system", "content": "Answer from the sources."},
    {"role": "user", "content": "What is the refund policy?"},
]


async def test_chat_completion(client: openai.AsyncOpenAI, standin: OpenAIStandIn) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, temperature=0.1)

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == DEFAULT_ANSWER
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 4 + 5
    assert completion.usage.completion_tokens == len(DEFAULT_ANSWER.split())
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    sent = standin.last_request
    assert sent["model"] == "gpt-4o-mini"
    assert sent["temperature"] == 0.1
    assert sent["messages"] == MESSAGES
    assert standin.request_headers[-1]["authorization"] == f"Bearer {KEY}"


async def test_streaming_deltas_concatenate_to_the_reply(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 2
    assert "".join(content) == DEFAULT_ANSWER
    *body, finish, usage = chunks
    assert finish.choices[0].finish_reason == "stop"
    assert all(chunk.choices[0].finish_reason is None for chunk in body)
    assert all(chunk.usage is None for chunk in [*body, finish])
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == len(DEFAULT_ANSWER.split())


async def test_streaming_without_include_usage_sends_no_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]

    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_wrong_key_is_an_authentication_error(standin: OpenAIStandIn) -> None:
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key="sk-wrong-key-1234", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as raised:
            await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()

    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"
    assert raised.value.type == "invalid_request_error"
    assert "Incorrect API key" in raised.value.message


async def test_injected_server_error_after_retries(client: openai.AsyncOpenAI, standin: OpenAIStandIn) -> None:
    standin.fail_next(500)

    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert raised.value.status_code == 500
    assert raised.value.type == "server_error"
    completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # the fault is used up
    assert completion.choices[0].message.content == DEFAULT_ANSWER


async def test_the_sdk_retries_injected_faults(standin: OpenAIStandIn) -> None:
    standin.fail_next(500, 2, retry_after_ms=1)
    async with openai.AsyncOpenAI(base_url=standin.base_url, api_key=KEY, max_retries=2) as sdk:
        completion = await sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert completion.choices[0].message.content == DEFAULT_ANSWER
    assert len(standin.requests) == 3


async def test_rate_limit(client: openai.AsyncOpenAI, standin: OpenAIStandIn) -> None:
    standin.fail_next(429)

    with pytest.raises(openai.RateLimitError) as raised:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    assert raised.value.code == "rate_limit_exceeded"


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="gpt-nonexistent", messages=MESSAGES)

    assert raised.value.code == "model_not_found"
    assert "gpt-nonexistent" in raised.value.message


async def test_malformed_requests_are_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="gpt-4o", messages=[])
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream_options={"include_usage": True})
    assert raised.value.param == "stream_options"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=3)


async def test_models_list(client: openai.AsyncOpenAI, standin: OpenAIStandIn) -> None:
    models = [model async for model in client.models.list()]

    assert [model.id for model in models] == ["gpt-4o", "gpt-4o-mini"]
    assert all(model.object == "model" and model.owned_by == "standin" for model in models)
    assert (await client.models.retrieve("gpt-4o")).id == "gpt-4o"
    assert standin.requests == []  # only chat requests are kept


async def test_condense_requests_get_a_standalone_question(client: openai.AsyncOpenAI, standin: OpenAIStandIn) -> None:
    prompt = (
        "Given the conversation below and a follow-up question, rewrite the follow-up as a standalone question.\n\n"
        "Conversation:\nuser: What is the refund policy?\nassistant: Refunds take 30 days [1].\n\n"
        "Follow-up question: And for enterprise plans?\n\nStandalone question:"
    )
    completion = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])

    assert completion.choices[0].message.content == (
        "And for enterprise plans? (follow-up to: What is the refund policy?)"
    )
    assert standin.condense_requests() == standin.requests
    assert standin.answer_requests() == []


async def test_queued_answers_then_answer_function(client: openai.AsyncOpenAI, standin: OpenAIStandIn) -> None:
    standin.queue_answers("first", lambda body: f"echo: {body['messages'][-1]['content']}")
    standin.answer_fn = lambda body: f"temperature {body.get('temperature')}"

    replies = [
        (await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, temperature=0.5))
        .choices[0]
        .message.content
        for _ in range(3)
    ]

    assert replies == ["first", "echo: What is the refund policy?", "temperature 0.5"]
    standin.reset()
    completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content == DEFAULT_ANSWER


async def test_max_tokens_cuts_the_reply(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=3)

    assert completion.choices[0].message.content == "Answer from the"
    assert completion.choices[0].finish_reason == "length"


async def test_error_in_the_middle_of_a_stream(client: openai.AsyncOpenAI, standin: OpenAIStandIn) -> None:
    standin.stream_error_after = 2
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    received: list[str] = []

    async with stream:
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    assert "".join(received) == "Answer from "


async def test_llamaindex_clients(standin: OpenAIStandIn) -> None:
    history = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hello?")]
    like = OpenAILike(
        model="gpt-4o-mini", api_base=standin.base_url, api_key=KEY, is_chat_model=True, temperature=0.5, max_retries=0
    )
    official = OpenAI(model="gpt-4o", api_base=standin.base_url, api_key=KEY, temperature=0.1, max_retries=0)

    assert (await like.achat(history)).message.content == DEFAULT_ANSWER
    streamed = [r async for r in await official.astream_chat(history)]
    assert streamed[-1].message.content == DEFAULT_ANSWER
    assert len(streamed) > 2

    first, second = standin.requests
    assert (first["model"], first["temperature"], first.get("stream", False)) == ("gpt-4o-mini", 0.5, False)
    assert (second["model"], second["temperature"], second["stream"]) == ("gpt-4o", 0.1, True)
    assert second["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"}]
