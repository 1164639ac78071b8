"""Citation checks: invalid markers removed cleanly, cited sources recorded, citing sentences scored."""

import pytest

from citechat.pipeline import citations
from citechat.pipeline.citations import (
    SUPPORT_THRESHOLD,
    SourceCheck,
    markers,
    split_pending,
    split_sentences,
    support,
    verify,
)

REVENUE = "In fiscal 2023 the company reported revenue of $7.4 million, up from $6.1 million."
CAFETERIA = "The office cafeteria serves vegetarian lunch on Fridays."
HEADCOUNT = "Headcount grew to 1,200 employees in 2023, most of them engineers."
SOURCES = [REVENUE, CAFETERIA, HEADCOUNT]


def test_valid_markers_are_kept():
    answer = "Revenue rose to 7.4 million in 2023 [1]. Headcount grew to 1,200 [3]."
    report = verify(answer, SOURCES)
    assert report.text == answer
    assert report.removed_markers == ()
    assert [s.sources for s in report.sentences] == [(1,), (3,)]


@pytest.mark.parametrize(
    ("answer", "cleaned", "removed"),
    [
        ("Revenue rose [7].", "Revenue rose.", (7,)),
        ("Revenue rose [0] in 2023.", "Revenue rose in 2023.", (0,)),
        ("Revenue rose [-1], then fell.", "Revenue rose, then fell.", (-1,)),
        ("(see [4])", "(see)", (4,)),
        ("[9] Revenue rose.", "Revenue rose.", (9,)),
        ("Revenue rose.[9] Costs fell.", "Revenue rose. Costs fell.", (9,)),
        ("Revenue rose [9]\nCosts fell [8] [7].", "Revenue rose\nCosts fell.", (9, 8, 7)),
        ("- [9] Revenue rose\n- Costs fell [9]\n", "- Revenue rose\n- Costs fell\n", (9,)),
        ("Revenue rose [2, 9].", "Revenue rose [2].", (9,)),
        ("Revenue rose [9, 1, 0].", "Revenue rose [1].", (9, 0)),
        ("Revenue rose [1,9,3].", "Revenue rose [1, 3].", (9,)),
        ("Revenue rose [1][9].", "Revenue rose [1].", (9,)),
        ("Revenue rose [9][1].", "Revenue rose [1].", (9,)),
        ("Revenue rose [1] [9] [3].", "Revenue rose [1] [3].", (9,)),
        ("Revenue rose [4] and fell [4, 5].", "Revenue rose and fell.", (4, 5)),
        ("Revenue rose [[9]5] and fell [1[9]].", "Revenue rose and fell [1].", (9, 5)),
    ],
)
def test_markers_naming_no_source_are_removed_cleanly(answer: str, cleaned: str, removed: tuple[int, ...]):
    report = verify(answer, SOURCES)
    assert report.text == cleaned
    assert report.removed_markers == removed
    assert all(1 <= n <= len(SOURCES) for n in markers(report.text))


@pytest.mark.parametrize(
    "answer", ["Revenue rose [1, 3].", "Revenue rose [1][3].", "Revenue rose [1,3].", "Revenue rose [ 1 ,3 ]."]
)
def test_grouped_markers_cite_every_number(answer: str):
    report = verify(answer, SOURCES)
    assert report.text == answer
    assert markers(answer) == [1, 3]
    assert report.sentences[0].sources == (1, 3)
    assert [source.cited for source in report.sources] == [True, False, True]


def test_brackets_that_are_not_markers_are_untouched():
    answer = (
        "See [note] and [a] for items [1-3], the [guide](https://example.com/a[4]) and [1](https://example.com).\n"
        "Index with `items[0]` or:\n```python\nrows[0]\nrows[9]. More\n```\n"
    )
    report = verify(answer, SOURCES)
    assert report.text == answer
    assert report.removed_markers == ()
    assert markers(answer) == []
    assert not any(source.cited for source in report.sources)


def test_every_source_has_a_cited_flag():
    report = verify("Revenue rose to 7.4 million in 2023 [1]. Headcount reached 1,200 [3].", SOURCES)
    assert [source.cited for source in report.sources] == [True, False, True]
    assert report.sources[1] == SourceCheck(number=2, cited=False, support=None)
    assert all(source.support is not None for source in report.sources if source.cited)


def test_a_paraphrase_with_the_same_numbers_is_supported():
    # revenue, million, 7.4 and 2023 are in the passage; "rose" is not: 4 of 5 tokens, both numbers.
    assert support("Revenue rose to 7.4 million in 2023 [1].", REVENUE) == pytest.approx(0.8)
    assert support("The company reports revenues of 7.4 million.", REVENUE) == 1.0  # stemming: reported, revenue
    assert support("Headcount: 1200 employees.", HEADCOUNT) == 1.0  # "1,200" is 1200
    report = verify("Revenue rose to 7.4 million in 2023 [1].", SOURCES)
    assert report.sentences[0].supported is True
    assert report.unsupported == ()


def test_a_wrong_number_costs_more_than_a_missing_word():
    right = support("Revenue rose to 7.4 million in 2023.", REVENUE)
    half_wrong = support("Revenue rose to 9.9 million in 2023.", REVENUE)
    assert half_wrong == pytest.approx(3 / 5 * 1 / 2)
    assert half_wrong < SUPPORT_THRESHOLD <= right
    assert support("Revenue rose to 9.9 million.", REVENUE) == 0.0  # every word matches, the one number does not
    assert support("Revenue of 7.40 million.", REVENUE) < SUPPORT_THRESHOLD  # numbers match literally
    report = verify("Revenue rose to 9.9 million [1].", SOURCES)
    assert report.sentences[0].supported is False
    assert report.unsupported == report.sentences
    assert report.text == "Revenue rose to 9.9 million [1]."  # flagged, not hidden


def test_a_sentence_citing_an_unrelated_source_is_unsupported():
    report = verify("Revenue rose to 7.4 million in 2023 [2].", SOURCES)
    assert report.sentences[0].support == 0.0
    assert report.sentences[0].supported is False
    assert report.sources[1] == SourceCheck(number=2, cited=True, support=0.0)


def test_support_ignores_markers_and_treats_empty_claims_as_supported():
    assert support("Revenue [1, 2] in 2023 [3].", REVENUE) == 1.0
    assert support("See [1].", REVENUE) == 1.0
    assert support("Revenue", "") == 0.0


def test_a_sentence_is_scored_against_the_union_of_its_sources_and_each_source_alone():
    report = verify("Revenue rose to 7.4 million while headcount grew to 1,200 [1, 3].", SOURCES)
    # union: all but "rose" (6 of 7), both numbers; alone: 3 of 7 tokens and 1 of 2 numbers each
    assert report.sentences[0].support == pytest.approx(6 / 7)
    assert report.sentences[0].supported is True
    assert report.sources[0].support == pytest.approx(3 / 7 / 2)
    assert report.sources[2].support == pytest.approx(3 / 7 / 2)


def test_a_padding_citation_does_not_borrow_support():
    report = verify("Revenue rose to 7.4 million in 2023 [1][2].", SOURCES)
    assert report.sentences[0].support == pytest.approx(0.8)
    assert report.sources[0].support == pytest.approx(0.8)
    assert report.sources[1].support == 0.0


def test_a_source_keeps_its_best_support_over_the_sentences_citing_it():
    report = verify(
        "Revenue rose to 9.9 million [1]. The company reported revenue of 7.4 million in 2023 [1].", SOURCES
    )
    assert [s.support for s in report.sentences] == [0.0, 1.0]
    assert report.sources[0].support == 1.0
    assert [s.text for s in report.unsupported] == ["Revenue rose to 9.9 million [1]."]


def test_an_answer_without_markers_cites_nothing():
    report = verify("Revenue rose. Costs fell.", SOURCES)
    assert report.text == "Revenue rose. Costs fell."
    assert [(s.text, s.sources, s.support, s.supported) for s in report.sentences] == [
        ("Revenue rose.", (), None, None),
        ("Costs fell.", (), None, None),
    ]
    assert report.sources == tuple(SourceCheck(n, False, None) for n in (1, 2, 3))
    assert report.unsupported == ()


def test_empty_answer_and_no_sources():
    empty = verify("", SOURCES)
    assert (empty.text, empty.sentences, empty.removed_markers) == ("", (), ())
    assert [source.cited for source in empty.sources] == [False, False, False]
    unsourced = verify("Revenue rose [1].", [])
    assert (unsourced.text, unsourced.sources, unsourced.removed_markers) == ("Revenue rose.", (), (1,))
    assert unsourced.sentences[0].sources == ()


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Revenue was 7.4 million. Costs fell.", ["Revenue was 7.4 million.", "Costs fell."]),
        ("It was 7.4. Then 8.1.", ["It was 7.4.", "Then 8.1."]),
        (
            "Several states, e.g. Texas, grew. Dr. Smith agreed.",
            ["Several states, e.g. Texas, grew.", "Dr. Smith agreed."],
        ),
        ("Sales in the U.S. grew 5% [1]. Margins held [2].", ["Sales in the U.S. grew 5% [1].", "Margins held [2]."]),
        ("See p. 12 of the report.", ["See p. 12 of the report."]),
        ("Revenue rose. [2] Costs fell. [1][3]", ["Revenue rose. [2]", "Costs fell. [1][3]"]),
        ("Revenue rose [2]. Costs fell [1, 3].", ["Revenue rose [2].", "Costs fell [1, 3]."]),
        ("Why? Because... It rose!", ["Why?", "Because...", "It rose!"]),
        ('He said "it rose." Then it fell.', ['He said "it rose."', "Then it fell."]),
        ("Revenue rose.\n[1]\n\nCosts fell.", ["Revenue rose.\n[1]", "Costs fell."]),
        (
            "Summary:\n- Revenue rose [1]\n  * Costs fell [2]\n1. Headcount grew\n## Outlook\n> Quoted text",
            ["Summary:", "Revenue rose [1]", "Costs fell [2]", "Headcount grew", "Outlook", "Quoted text"],
        ),
        ("Run this:\n```\nx = a[0]. Then\n```\nDone.", ["Run this:", "```\nx = a[0]. Then\n```", "Done."]),
        ("", []),
        (" \n\n ", []),
    ],
)
def test_split_sentences(text: str, sentences: list[str]):
    assert split_sentences(text) == sentences
    assert all(sentence in text for sentence in sentences)


def test_markers_lists_every_number_in_order():
    assert markers("A [2] b [1, 7][2] c [0] d [-3] `e[4]` [f](g[5]) [note]") == [2, 1, 7, 2, 0, -3]


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("Revenue rose [1, ", ("Revenue rose ", "[1, ")),
        ("Revenue rose [", ("Revenue rose ", "[")),
        ("Revenue rose [1]", ("Revenue rose [1]", "")),
        ("See [note", ("See [note", "")),
        ("", ("", "")),
    ],
)
def test_split_pending_holds_back_an_unfinished_marker(text: str, parts: tuple[str, str]):
    assert split_pending(text) == parts


def test_passages_found_ahead_give_the_same_report_and_leave_only_the_answer_to_read(monkeypatch):
    answers = [
        "Revenue rose to 7.4 million in 2023 [1]. Headcount reached 1,200 [3].",
        "Revenue rose to 9.9 million [1, 2]. The cafeteria serves lunch [2][7].",
    ]
    passages = citations.Passages(SOURCES)
    read = []
    real = citations.content_terms
    monkeypatch.setattr(citations, "content_terms", lambda text: read.append(text) or real(text))
    for answer in answers:
        assert verify(answer, passages) == verify(answer, SOURCES)
    sources_read = [text for text in read if text in SOURCES]
    assert len(sources_read) == 2 * len(SOURCES)  # by the plain-text calls only, once each


STREAMED = [
    "Revenue rose to 7.4 million in 2023 [1]. Headcount grew to 1,200 [3]. The cafeteria serves lunch [2].",
    "- Revenue rose [1]\n- Costs fell [9]\n\nDr. Smith said e.g. that revenue was 7.4 [1]. Lunch is vegetarian [2]!",
    "```\nx[0] = 1. y = 2.\n```\nRevenue rose [1]. Is it so? It is [1, 3].\n\n1. Headcount [3]\n2. Revenue [4]",
    "No citations at all. Just text. And more text...",
]


@pytest.mark.parametrize("answer", STREAMED)
@pytest.mark.parametrize("piece", [1, 3, 7, 40])
def test_claims_noted_while_streaming_change_nothing_and_leave_the_last_sentence(answer, piece, monkeypatch):
    """Noting the sentences' claims as the answer streams gives the report ``verify`` gives alone, and after the
    last token only the sentences still open are read."""
    claims = citations.Claims()
    text = ""
    for start in range(0, len(answer), piece):
        text += answer[start : start + piece]
        if any(end in text[-piece:] for end in ".!?\n"):
            claims.note(text)
    read = []
    claimed = citations._claims
    monkeypatch.setattr(citations, "_claims", lambda sentence: read.append(sentence) or claimed(sentence))
    assert verify(answer, SOURCES, claims) == verify(answer, SOURCES)
    citing = [s.text for s in verify(answer, SOURCES).sentences if s.sources]
    read.clear()
    verify(answer, SOURCES, claims)
    assert read in ([], citing[-1:])  # at most the last citing sentence
