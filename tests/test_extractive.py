"""The extractive answerer: picks, quotes and cites sentences; and works as a LlamaIndex LLM, streaming included."""

import re

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from citechat.pipeline.engine import with_previous_question
from citechat.pipeline.extractive import NOTHING_FOUND, ExtractiveLLM, answer, split_sentences

PASSAGES = [
    "The cafeteria opens at 8 am on weekdays. Parking is free for all staff members.",
    "Revenue rose to 7.4 million dollars in 2023. The increase was driven by exports to Asia.",
    "Revenue in 2022 was 6.1 million dollars. Headcount grew to 120 people over the year.",
]


def normalised(text: str) -> str:
    return " ".join(text.split())


def test_picks_the_answering_sentence_and_cites_its_source() -> None:
    result = answer("What was the revenue in 2023?", PASSAGES)

    assert result.found
    assert result.text == "Revenue rose to 7.4 million dollars in 2023 [2]."
    assert [(s.text, s.source) for s in result.sentences] == [("Revenue rose to 7.4 million dollars in 2023.", 2)]


def test_markers_follow_each_sentence_with_its_own_source_number() -> None:
    result = answer("When does the cafeteria open, and what drove the increase in exports?", PASSAGES)

    assert result.text == "The cafeteria opens at 8 am on weekdays [1]. The increase was driven by exports to Asia [2]."
    assert [s.source for s in result.sentences] == [1, 2]
    assert result.sentences[0].score > result.sentences[1].score


def test_every_quoted_sentence_is_verbatim_from_its_passage() -> None:
    passages = [
        "Our  travel policy\ncovers  economy flights only.  Business class needs\nthe CFO's approval.",
        "Hotel costs are refunded up to 150 dollars per night under the travel policy.",
    ]
    result = answer("What does the travel policy say about flights and hotel costs?", passages, max_sentences=5)

    assert [s.text for s in result.sentences] == [
        "Hotel costs are refunded up to 150 dollars per night under the travel policy.",
        "Our travel policy covers economy flights only.",
    ]
    for sentence in result.sentences:
        assert sentence.text in normalised(passages[sentence.source - 1])
    assert result.text == " ".join(f"{s.text[:-1]} [{s.source}]." for s in result.sentences)


def test_numbers_in_the_question_match_exactly() -> None:
    passages = [
        "Product A costs 7.45 dollars per unit.",
        "Product B costs 74 dollars per unit.",
        "Product C costs 7.4 dollars per unit.",
    ]
    result = answer("Which product costs 7.4 dollars?", passages)

    assert result.text == "Product C costs 7.4 dollars per unit [3]."


def test_a_sentence_ending_in_an_abbreviation_keeps_its_dot() -> None:
    result = answer("Where are the products sold?", ["The products are sold in the U.S."])

    assert result.text == "The products are sold in the U.S. [1]"


def test_thousands_separators_do_not_hide_a_number() -> None:
    result = answer("Who has 1200 employees?", ["Globex has 1,200 employees worldwide.", "Initech has 300 employees."])

    assert result.text == "Globex has 1,200 employees worldwide [1]."


def test_max_sentences_is_respected() -> None:
    passages = [
        "The quarterly report lists revenue figures for the northern region.",
        "Revenue figures in the second quarterly report were audited by Deloitte last spring.",
        "Each quarterly report shows revenue figures per product line and per sales channel.",
        "Our board reviews the quarterly report and its revenue figures every month in Berlin.",
    ]

    assert len(answer("revenue figures in the quarterly report", passages).sentences) == 3
    assert len(answer("revenue figures in the quarterly report", passages, max_sentences=2).sentences) == 2
    single = answer("revenue figures in the quarterly report", passages, max_sentences=1)
    assert single.text == "The quarterly report lists revenue figures for the northern region [1]."


def test_no_relevant_passage_says_so() -> None:
    result = answer("What is the capital of France?", PASSAGES)

    assert result.text == NOTHING_FOUND
    assert not result.found
    assert result.sentences == ()


def test_one_generic_shared_word_is_not_relevant() -> None:
    result = answer("What is the parental leave policy for contractors?", ["The expense policy was updated in May."])

    assert result.text == NOTHING_FOUND


def test_a_heading_is_never_quoted() -> None:
    """A heading names a topic and states nothing: "Orbital Bakery Annual Report 2023" is no answer to what the
    bakery's profit was, however many of the question's words it holds."""
    passage = "Orbital Bakery Annual Report 2023\nThe bakery opened a second shop in Leith during the year."

    assert answer("What was Orbital Bakery's net profit in 2023?", [passage]).text == NOTHING_FOUND
    assert answer("What did Orbital Bakery open in 2023?", [passage]).text == (
        "The bakery opened a second shop in Leith during the year [1]."
    )


def test_a_heading_still_weighs_the_question_terms() -> None:
    """Headings stay among the sentences that decide how rare each question term is: a term found only in a
    heading is not weighted as if the passages never mentioned it, which would make every other sentence's share
    of the question smaller."""
    passages = [
        "Northwind Labs Travel Policy\nStaff may book economy flights for trips under six hours.",
        "Hotel costs are refunded up to 150 dollars per night.",
    ]

    result = answer("What flights may staff book under the Northwind Labs travel policy?", passages)

    assert result.text == "Staff may book economy flights for trips under six hours [1]."


@pytest.mark.parametrize("passages", [[], [""], ["   \n\n  "]])
def test_no_passages_says_so(passages: list[str]) -> None:
    result = answer("What was the revenue in 2023?", passages)

    assert (result.text, result.sentences, result.found) == (NOTHING_FOUND, (), False)


def test_a_question_without_content_words_finds_nothing() -> None:
    assert answer("What is it?", PASSAGES).text == NOTHING_FOUND


def test_repeated_sentences_are_quoted_once() -> None:
    passages = [
        "The office is closed on public holidays.",
        "Note: the office is closed on public holidays.",
        "The office is closed on public holidays!",
    ]
    result = answer("Is the office closed on public holidays?", passages)

    assert result.text == "The office is closed on public holidays [1]."


@pytest.mark.parametrize(
    ("passage", "sentences"),
    [
        ("Revenue was 7.4 million. Costs were 3.2 million.", ["Revenue was 7.4 million.", "Costs were 3.2 million."]),
        (
            "Big firms, e.g. Acme Inc. and Globex Corp., grew. They hired.",
            ["Big firms, e.g. Acme Inc. and Globex Corp., grew.", "They hired."],
        ),
        ("Sales in the U.S. Market grew. Dr. Smith agreed.", ["Sales in the U.S. Market grew.", "Dr. Smith agreed."]),
        (
            "See Fig. 3 and No. 5 for details. J. Smith wrote it.",
            ["See Fig. 3 and No. 5 for details.", "J. Smith wrote it."],
        ),
        (
            "The revenue\nrose sharply in\nthe last quarter. Costs fell.",
            ["The revenue rose sharply in the last quarter.", "Costs fell."],
        ),
        ("Why did it rise? Exports! Mostly to Asia.", ["Why did it rise?", "Exports!", "Mostly to Asia."]),
        ('He said "we grew." Then he left.', ['He said "we grew."', "Then he left."]),
        ("A paragraph without a stop\n\nSecond paragraph.", ["A paragraph without a stop", "Second paragraph."]),
        ("Financial Results\nRevenue rose.", ["Financial Results", "Revenue rose."]),
        (
            "Our offices:\n• Berlin has 40 staff\n- Paris has 12 staff",
            ["Our offices:", "Berlin has 40 staff", "Paris has 12 staff"],
        ),
        (
            "Region    2022    2023\nEurope    5.1    6.2\nTotals are audited.",
            ["Region 2022 2023", "Europe 5.1 6.2", "Totals are audited."],
        ),
        ("Name | Role\nAda | CTO", ["Name | Role", "Ada | CTO"]),
    ],
)
def test_sentence_splitting(passage: str, sentences: list[str]) -> None:
    assert split_sentences(passage) == sentences


def test_a_table_row_can_answer_a_numeric_question() -> None:
    result = answer(
        "What was Europe's revenue in 2023?", ["Revenue by region\nRegion    2022    2023\nEurope    5.1    6.2"]
    )

    assert result.found
    assert result.sentences[0].text in {"Region 2022 2023", "Europe 5.1 6.2"}


QUESTION = "When does the cafeteria open, and what drove the increase in exports?"
EXPECTED = "The cafeteria opens at 8 am on weekdays [1]. The increase was driven by exports to Asia [2]."


def make_llm() -> ExtractiveLLM:
    return ExtractiveLLM(question=QUESTION, passages=PASSAGES)


def test_the_llm_tests_expect_what_answer_gives() -> None:
    assert answer(QUESTION, PASSAGES).text == EXPECTED


def test_metadata_describes_a_completion_model() -> None:
    metadata = make_llm().metadata

    assert (metadata.model_name, metadata.is_chat_model) == ("extractive", False)
    assert metadata.context_window >= 100_000


async def test_acomplete_ignores_the_prompt_and_answers_from_the_passages() -> None:
    response = await make_llm().acomplete("Context: something else entirely. Question: anything")

    assert response.text == EXPECTED


async def test_astream_complete_yields_word_deltas_that_add_up_to_the_answer() -> None:
    responses = [response async for response in await make_llm().astream_complete("anything")]

    deltas = [response.delta for response in responses]
    assert len(deltas) == len(EXPECTED.split())
    assert "".join(deltas) == EXPECTED
    assert deltas[:2] == ["The ", "cafeteria "]
    assert [response.text for response in responses] == ["".join(deltas[: i + 1]) for i in range(len(deltas))]


def test_sync_complete_and_stream_complete_agree() -> None:
    llm = make_llm()

    assert llm.complete("anything").text == EXPECTED
    assert "".join(response.delta or "" for response in llm.stream_complete("anything")) == EXPECTED
    assert llm.chat([ChatMessage(role="user", content="anything")]).message.content == EXPECTED


async def test_achat_and_astream_chat_answer_from_the_passages() -> None:
    llm = make_llm()
    messages = [ChatMessage(role="user", content="What is anything?")]

    response = await llm.achat(messages)
    assert (response.message.role, response.message.content) == (MessageRole.ASSISTANT, EXPECTED)

    chunks = [chunk async for chunk in await llm.astream_chat(messages)]
    assert len(chunks) > 1
    assert "".join(chunk.delta or "" for chunk in chunks) == EXPECTED
    assert chunks[-1].message.content == EXPECTED


async def test_nothing_found_streams_too() -> None:
    llm = ExtractiveLLM(question="What is the capital of France?", passages=PASSAGES)

    deltas = [response.delta async for response in await llm.astream_complete("anything")]
    assert "".join(deltas) == NOTHING_FOUND


class FixedRetriever(BaseRetriever):
    """Returns the same passages for every query, in order."""

    def __init__(self, passages: list[str]) -> None:
        super().__init__()
        self._passages = passages

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text=text), score=1.0) for text in self._passages]


async def test_condense_plus_context_chat_engine_streams_the_extractive_answer() -> None:
    engine = CondensePlusContextChatEngine.from_defaults(retriever=FixedRetriever(PASSAGES), llm=make_llm())

    streaming = await engine.astream_chat(QUESTION)
    tokens = [token async for token in streaming.async_response_gen()]

    assert len(tokens) > 1
    assert "".join(tokens) == EXPECTED
    assert streaming.response == EXPECTED


async def test_condense_plus_context_chat_engine_answers_without_streaming() -> None:
    engine = CondensePlusContextChatEngine.from_defaults(retriever=FixedRetriever(PASSAGES), llm=make_llm())

    assert (await engine.achat(QUESTION)).response == EXPECTED


def test_answers_never_contain_words_absent_from_the_passages() -> None:
    vocabulary = set(re.findall(r"\w+", " ".join(PASSAGES)))
    for question in [QUESTION, "headcount people", "parking staff", "exports Asia", "cafeteria weekdays"]:
        result = answer(question, PASSAGES)
        assert result.found
        assert set(re.findall(r"\w+", result.text)) <= vocabulary | {str(n) for n in range(1, len(PASSAGES) + 1)}


HISTORY = [
    ChatMessage(role=MessageRole.USER, content="What was the revenue in 2023?"),
    ChatMessage(role=MessageRole.ASSISTANT, content="Revenue rose to 7.4 million dollars in 2023 [2]."),
]


@pytest.mark.parametrize(
    "follow_up",
    ["And what drove the increase?", "What about 2022?", "What drove it?", "How did they grow it?", "Why so?"],
)
def test_a_follow_up_that_refers_back_is_joined_to_the_question_before_it(follow_up: str) -> None:
    assert with_previous_question(HISTORY, follow_up) == f"What was the revenue in 2023? {follow_up}"
    assert with_previous_question(HISTORY[1:], follow_up) == follow_up  # no question before it


@pytest.mark.parametrize(
    "question",
    ["When does the cafeteria open?", "Is there a policy that covers parking?", "What is this report's headcount?"],
)
def test_a_new_question_is_searched_as_asked(question: str) -> None:
    assert with_previous_question(HISTORY, question) == question


def test_a_joined_follow_up_finds_what_it_refers_to() -> None:
    follow_up = with_previous_question(HISTORY, "And what drove the increase?")

    assert answer(follow_up, PASSAGES).text.startswith("Revenue rose to 7.4 million dollars in 2023 [2].")
