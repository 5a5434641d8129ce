"""One rule for "the same question": the library's known query and the prompter's left-out
example agree, so a program the library would reuse for a query is never shown as a
few-shot example when that query is asked."""

import pytest

from viprog.library import Library
from viprog.policy import Prompter
from viprog.policy.prompts import normalize_query

STORED = "How many red circles are there?"
PROGRAM = "def execute_command(image):\n    return 'stored'\n"

SAME = ["how many red circles are there", "  How many RED circles  are there ?", "How many red circles are there!",
        "How many red, circles are there?"]
OTHER = ["How many red circles are there on the left?", "How many blue circles are there?", "Are there red circles?"]


def library() -> Library:
    return Library([{"question_id": "q1", "query": STORED, "program": PROGRAM, "reward": 1.0, "round": 1}])


@pytest.mark.parametrize("query", SAME)
def test_a_known_query_is_reused_and_never_shown_as_an_example(query):
    lib = library()
    assert lib.lookup(query) is not None
    prompt = Prompter("API", []).few_shot(query, extra=lib.examples(query, 1))
    assert "'stored'" not in prompt


@pytest.mark.parametrize("query", OTHER)
def test_another_query_is_not_reused_and_may_see_the_stored_program(query):
    lib = library()
    assert lib.lookup(query) is None
    prompt = Prompter("API", []).few_shot(query, extra=lib.examples(query, 1))
    assert "'stored'" in prompt


def test_the_rule_keeps_words_of_any_script_and_drops_punctuation():
    assert normalize_query("Wie viele Kreise?") == normalize_query("wie  viele kreise") == "wie viele kreise"
    assert normalize_query("¿Cuántos círculos hay?") == "cuántos círculos hay"
    assert normalize_query("Is the cube_left red?") == "is the cube left red"
