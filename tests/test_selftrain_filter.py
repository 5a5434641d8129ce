"""The filter that turns sampled programs into training data (viprog.filtering)."""

from viprog.filtering import filter_samples, filter_stats, normalize_program

P1 = 'def execute_command(image):\n    return len(ImagePatch(image).find("circle"))\n'
P1_REFORMATTED = "def execute_command(image):\n    # count them\n    return len( ImagePatch(image).find('circle') )\n"
P2 = 'def execute_command(image):\n    return len(ImagePatch(image).find("square"))\n'


def sample(qid, program, reward, error_kind=None):
    return {"question_id": qid, "program": program, "reward": reward, "error_kind": error_kind}


def test_keeps_only_rewards_at_or_above_tau():
    samples = [sample("a", P1, 1.0), sample("a", P2, 0.4), sample("b", P2, 0.5)]
    kept = filter_samples(samples, tau=0.5, dedup=False)
    assert [(s["question_id"], s["reward"]) for s in kept] == [("a", 1.0), ("b", 0.5)]


def test_failed_runs_are_never_kept_whatever_their_reward():
    kept = filter_samples([sample("a", P1, 1.0, error_kind="timeout")], tau=0.0)
    assert kept == []


def test_dedup_treats_layout_and_comments_as_identical():
    assert normalize_program(P1) == normalize_program(P1_REFORMATTED)
    kept = filter_samples([sample("a", P1, 1.0), sample("a", P1_REFORMATTED, 1.0), sample("a", P2, 1.0)])
    assert [s["program"] for s in kept] == [P1, P2]


def test_dedup_is_per_question():
    kept = filter_samples([sample("a", P1, 1.0), sample("b", P1, 1.0)])
    assert len(kept) == 2


def test_without_dedup_duplicates_stay():
    kept = filter_samples([sample("a", P1, 1.0), sample("a", P1, 1.0)], dedup=False)
    assert len(kept) == 2


def test_cap_prefers_higher_rewards_then_earlier_samples():
    samples = [sample("a", P1, 0.6), sample("a", P2, 1.0), sample("a", P1 + "\n# x", 0.6),
               sample("a", "def execute_command(image):\n    return 3\n", 0.9)]
    kept = filter_samples(samples, tau=0.5, dedup=False, cap_per_question=2)
    assert sorted(s["reward"] for s in kept) == [0.9, 1.0]


def test_unparsable_programs_still_compare_by_text():
    assert normalize_program("def f(:\n  x  \n") == normalize_program("def f(:\n  x\n")


def test_stats_count_kept_fraction_and_distinct_programs():
    samples = [sample("a", P1, 1.0), sample("a", P1_REFORMATTED, 1.0), sample("b", P2, 0.0), sample("b", P2, 0.0)]
    kept = filter_samples(samples)
    stats = filter_stats(samples, kept)
    assert stats["filter/kept_frac"] == 0.25
    assert stats["filter/unique_programs"] == 2
    assert stats["filter/questions_solved_frac"] == 0.5
