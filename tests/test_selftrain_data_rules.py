"""The rules that make training data better than "reward ≥ τ": lucky guesses are not kept,
programs are deduplicated across questions, and each rule's removals are counted. (The
fine-tuning checks — other LoRA settings refused, over-long pairs counted — are in
test_selftrain_finetune.py.)"""

import pytest

from viprog.filtering import RULES, filter_stats, lucky_guess, primitive_calls, returns_constant, select_programs

COUNT = 'def execute_command(image):\n    return len(ImagePatch(image).find("circle"))\n'
YES = 'def execute_command(image):\n    image_patch = ImagePatch(image)\n    return "yes"\n'
BRANCHES_SAME = ('def execute_command(image):\n    image_patch = ImagePatch(image)\n'
                 '    if image_patch.exists("red star"):\n        return bool_to_yesno(True)\n'
                 '    return bool_to_yesno(True)\n')
BRANCHES_DIFFER = ('def execute_command(image):\n    image_patch = ImagePatch(image)\n'
                   '    if image_patch.exists("red star"):\n        return "yes"\n    return "no"\n')
NESTED = ('def execute_command(image):\n    def pick(patches):\n        return 1\n'
          '    return pick(ImagePatch(image).find("star"))\n')


def sample(qid, program, reward=1.0, calls=1):
    return {"question_id": qid, "program": program, "reward": reward, "error_kind": None, "primitive_calls": calls}


@pytest.mark.parametrize(("source", "constant"), [
    (YES, True), (BRANCHES_SAME, True), (BRANCHES_DIFFER, False), (COUNT, False), (NESTED, False),
    ("def execute_command(image):\n    return 3\n", True), ("def execute_command(:\n", False),
    ("def other(image):\n    return 3\n", False),
])
def test_returns_constant_reads_every_return_of_execute_command(source, constant):
    assert returns_constant(source) is constant


def test_lucky_guess_uses_the_trace_then_the_source():
    assert lucky_guess(sample("a", COUNT, calls=0)) == "lucky_no_primitive"  # ran, but called nothing
    assert lucky_guess(sample("a", YES, calls=2)) == "lucky_constant"
    assert lucky_guess(sample("a", COUNT, calls=1)) is None
    assert lucky_guess({"program": COUNT}) is None  # no trace count: the source alone decides
    assert primitive_calls({"trace": [{"primitive": "find"}, {"primitive": "exists"}]}) == 2
    assert primitive_calls({"trace": None}) == 0


def test_each_rule_counts_what_it_removed():
    other = COUNT.replace("circle", "square")
    samples = [sample("a", COUNT), sample("a", COUNT), sample("a", YES), sample("a", other, calls=0),
               sample("b", COUNT), sample("b", other), sample("b", other.replace("square", "star")),
               sample("c", COUNT, reward=0.0)]
    kept, removed = select_programs(samples, tau=1.0, dedup=True, cap_per_question=1, drop_lucky=True,
                                    dedup_across_questions=True)
    assert [(s["question_id"], s["program"]) for s in kept] == [("a", COUNT), ("b", other)]
    assert removed == {"lucky_no_primitive": 1, "lucky_constant": 1, "dup_question": 1, "dup_across_questions": 1,
                       "cap": 1}
    stats = filter_stats(samples, kept, removed)
    assert {f"filter/removed/{rule}" for rule in RULES} <= set(stats)
    assert stats["filter/removed/lucky_constant"] == 1


def test_rules_off_keep_what_the_reward_keeps():
    samples = [sample("a", YES, calls=0), sample("b", YES, calls=0)]
    kept, removed = select_programs(samples, dedup=True)
    assert len(kept) == 2 and not any(removed.values())


def test_dedup_across_questions_keeps_the_first_question_and_compares_normalised_sources():
    reformatted = COUNT.replace('"circle"', "'circle'") + "# same program\n"
    kept, removed = select_programs([sample("q1", COUNT), sample("q2", reformatted)], dedup_across_questions=True)
    assert [s["question_id"] for s in kept] == ["q1"] and removed["dup_across_questions"] == 1
