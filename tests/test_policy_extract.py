"""Program extraction: each kind of damage a sampled completion shows is repaired, and
what cannot be repaired comes back as text (the executor calls it `syntax`)."""

from __future__ import annotations

import pytest

from viprog.executor.restrict import check_program
from viprog.policy.extract import HEADER, extract_program

BODY = "\n    image_patch = ImagePatch(image)\n    return bool_to_yesno(image_patch.exists('cat'))\n"
PROGRAM = HEADER + BODY


def compiles(source: str) -> bool:
    try:
        compile(source, "<t>", "exec")
    except SyntaxError:
        return False
    return True


def test_body_completion_gets_the_prompts_header():
    assert extract_program(BODY) == PROGRAM


def test_completion_with_its_own_function_keeps_its_header():
    own = "def execute_command(image) -> str:\n    return 'yes'\n"
    assert extract_program(own, "chat") == own


def test_closing_fence_opened_by_the_prompt_ends_the_program():
    assert extract_program(BODY + "```\nThis program checks for a cat.", "chat") == PROGRAM


def test_fenced_block_after_prose_is_taken():
    text = "Sure! Here it is:\n```python\n" + PROGRAM + "```\nHope this helps."
    assert extract_program(text, "chat") == PROGRAM


def test_trailing_chatter_and_next_example_are_dropped():
    text = BODY + "\n\n# Query: Is there a dog?\ndef execute_command(image):\n    return 'no'\nprint(1)\n"
    assert extract_program(text) == PROGRAM


def test_body_written_flush_left_is_indented():
    text = "\nimage_patch = ImagePatch(image)\nreturn 'yes'\n"
    source = extract_program(text.lstrip("\n"))
    assert compiles(source) and "    return 'yes'" in source


def test_first_line_that_lost_its_indent_is_realigned():
    text = "image_patch = ImagePatch(image)\n    patches = image_patch.find('cat')\n    return len(patches)\n"
    source = extract_program(text)
    assert compiles(source) and source.splitlines()[1] == "    image_patch = ImagePatch(image)"


def test_tabs_are_expanded():
    source = extract_program("\n\timage_patch = ImagePatch(image)\n\treturn 'no'\n")
    assert compiles(source) and "\t" not in source


def test_statement_cut_by_the_token_limit_is_dropped():
    text = BODY + "    patches = image_patch.find("
    assert extract_program(text) == PROGRAM


@pytest.mark.parametrize("junk", ["", "   \n", "))))((((", "    return (\n"])
def test_unrepairable_text_is_returned_not_raised(junk):
    source = extract_program(junk)
    assert isinstance(source, str) and source.startswith(HEADER) and not compiles(source)


def test_raw_style_keeps_a_whole_program_and_its_helpers():
    raw = "def helper(x):\n    return x\n"
    assert extract_program(raw, "raw") == raw


def test_result_always_ends_with_a_newline():
    assert extract_program("    return 'yes'").endswith("'yes'\n")


def test_rest_of_the_header_line_is_dropped_when_it_is_not_code():
    """The completion continues `def execute_command(image):`; a restated return
    annotation or chatter on that line must not cost the program."""
    for first in (" -> str:", " example command"):
        source = extract_program(first + "\n    patch = ImagePatch(image)\n    return 'yes'\n")
        assert compiles(source) and source.startswith("def execute_command(image):\n    patch = ")
    one_line = extract_program(" return 3\n")
    assert compiles(one_line) and "return 3" in one_line


# -- statements run together, stray words, truncated statements (0.5B-model samples) -----

RUN_TOGETHER = {  # completion -> body of the program it gives
    "on the header line": (
        ' image_patch = ImagePatch(image) return bool_to_yesno(image_patch.exists("large circle"))\n\n',
        '    image_patch = ImagePatch(image)\n    return bool_to_yesno(image_patch.exists("large circle"))\n'),
    "three, with a comment, in order": (
        (' image_patch = ImagePatch(image) patch = image_patch.find("triangle")[0] '
         'return patch.simple_query("What size is it?")  # size\r\n\r'),
        ('    image_patch = ImagePatch(image)\n    patch = image_patch.find("triangle")[0]\n'
         '    return patch.simple_query("What size is it?")  # size\n')),
    "before indented lines: at their indent": (
        ' image_patch = ImagePatch(image)    objs = image_patch.find("cube")\n    return len(objs)\n',
        '    image_patch = ImagePatch(image)\n    objs = image_patch.find("cube")\n    return len(objs)\n'),
    "inside a block: at the block's indent": (
        ("\n    image_patch = ImagePatch(image)\n    if image_patch.exists('cube'):\n"
         "        cube = image_patch.find('cube')[0] return cube.simple_query('What color?')\n    return 'none'\n"),
        ("    image_patch = ImagePatch(image)\n    if image_patch.exists('cube'):\n"
         "        cube = image_patch.find('cube')[0]\n        return cube.simple_query('What color?')\n"
         "    return 'none'\n")),
}


@pytest.mark.parametrize("case", RUN_TOGETHER)
def test_statements_run_together_on_one_line_are_split(case):
    completion, body = RUN_TOGETHER[case]
    source = extract_program(completion)
    assert source == HEADER + "\n" + body and compiles(source)


def test_stray_word_after_the_last_statement_is_dropped():
    text = '\n    patch = ImagePatch(image)\n    return patch.simple_query("What color?")  segment\n\n'
    source = extract_program(text)
    assert source == HEADER + '\n    patch = ImagePatch(image)\n    return patch.simple_query("What color?")\n'


def test_stray_word_between_statements_is_not_taken_for_a_layout_slip():
    text = "\n    a = ImagePatch(image) junk b = a.find('cube')\n"
    assert extract_program(text) == HEADER + text.rstrip("\n") + "\n"


@pytest.mark.parametrize("first", [" personal", " .", ":", " path: str) -> bool:"])
def test_junk_on_the_header_line_is_dropped(first):
    source = extract_program(first + BODY)
    assert source == PROGRAM


def test_statement_after_a_restated_signature_on_the_header_line_is_kept():
    text = " path -> str: image_patch = ImagePatch(image)\n return image_patch.exists('cat')\n"
    source = extract_program(text)
    assert compiles(source) and source.splitlines()[1:] == [
        " image_patch = ImagePatch(image)", " return image_patch.exists('cat')"]


def test_last_statement_cut_inside_brackets_is_closed():
    text = ("\n    color = ImagePatch(image).simple_query('What color?')\n"
            "    shape = ImagePatch(image).simple_query('What shape?')\n"
            "    return bool_to_yesno(color == shape")
    source = extract_program(text)
    assert source.endswith("\n    return bool_to_yesno(color == shape)\n") and compiles(source)
    commented = extract_program(text + "  # same color and shape?")
    assert commented.endswith("\n    return bool_to_yesno(color == shape)  # same color and shape?\n")
    nested = extract_program("\n    return bool_to_yesno(ImagePatch(image).exists('cat'")
    assert nested.endswith("    return bool_to_yesno(ImagePatch(image).exists('cat'))\n")


@pytest.mark.parametrize("cut", ["size ==", "size == yellow_square", "size == small_red", "size == s"])
def test_statement_cut_inside_a_word_or_after_an_operator_is_dropped_not_closed(cut):
    """`yellow_square` may be `yellow_square_size` cut short: closing it would compare
    with the wrong value, so the statement is cut as before."""
    body = ("\n    yellow_square = ImagePatch(image).find('yellow square')[0]\n"
            "    size = yellow_square.simple_query('What size?')\n"
            "    yellow_square_size = size\n")
    source = extract_program(body + f"    return bool_to_yesno({cut}")
    assert source == HEADER + body


@pytest.mark.parametrize("completion", ["", "   \n", "\n\n", "  # a red square\n",
                                        "\n\n\n# Query: Is there a small triangle?"])
def test_completion_without_a_body_fails_cleanly_as_syntax(completion):
    source = extract_program(completion)
    assert source == HEADER + "\n"
    failure = check_program(source)
    assert failure is not None and failure.error_kind == "syntax"


def test_unfixable_completion_is_returned_unchanged_for_the_executor():
    text = "\n    image_patch = ImagePatch(image) if image_patch exists('x') else []\n"
    source = extract_program(text)
    assert source == HEADER + text
    failure = check_program(source)
    assert failure is not None and failure.error_kind == "syntax"


@pytest.mark.parametrize("opener", ['if ImagePatch(image).exists("cube"):', 'for p in ImagePatch(image).find("cube"):',
                                    "with_patch = ImagePatch(image)"])
def test_a_body_that_opens_with_a_block_keeps_its_first_line(opener):
    """Prompts end with the header's newline, so a completion's first line is the body's
    first line — a block opener there is code, not the rest of the header line."""
    body = f"    {opener}\n        return 'yes'\n    return 'no'\n" if opener.endswith(":") else \
        f"    {opener}\n    return 'no'\n"
    assert extract_program(body) == f"{HEADER}\n{body}"
