"""Few-shot seed programs, written by hand for each task (≤ 8 each, ViperGPT style).

Why hand-written and kept here: self-training starts from these before any program has
been rewarded, so they must show the API idioms a task needs (find + index, relations by
patch centres, counting with len, yes/no with bool_to_yesno, returning a patch for
grounding, checking both captions for retrieval). None is taken from a test split: the
questions are invented, in each dataset's style.
"""

from __future__ import annotations


def _p(*lines: str, returns: str = "str") -> str:
    body = "\n".join("    " + line for line in ("image_patch = ImagePatch(image)", *lines))
    return f"def execute_command(image) -> {returns}:\n{body}\n"


SHAPES_SEEDS: tuple[tuple[str, str], ...] = (
    ("Is there a large green triangle?",
     _p('return bool_to_yesno(image_patch.exists("large green triangle"))')),
    ("How many blue objects are there?",
     _p('return len(image_patch.find("blue object"))', returns="int")),
    ("What color is the small star?",
     _p('star_patch = image_patch.find("small star")[0]', 'return star_patch.simple_query("What color is the star?")')),
    ("Is the purple ball to the left of the yellow square?",
     _p('ball_patch = image_patch.find("purple ball")[0]', 'square_patch = image_patch.find("yellow square")[0]',
        "return bool_to_yesno(ball_patch.horizontal_center < square_patch.horizontal_center)")),
    ("What shape is the orange object above the large circle?",
     _p('circle_patch = image_patch.find("large circle")[0]',
        'object_patches = [patch for patch in image_patch.find("orange object") '
        "if patch.vertical_center > circle_patch.vertical_center]",
        'return object_patches[0].simple_query("What shape is the object?")')),
    ("Are there both a red cube and a small triangle?",
     _p('return bool_to_yesno(image_patch.exists("red cube") and image_patch.exists("small triangle"))')),
    ("Is the large star green or blue?",
     _p('star_patch = image_patch.find("large star")[0]', 'return star_patch.best_text_match(["green", "blue"])')),
    ("Do the small square and the large triangle have the same color?",
     _p('square_patch = image_patch.find("small square")[0]', 'triangle_patch = image_patch.find("large triangle")[0]',
        'square_color = square_patch.simple_query("What color is the square?")',
        'triangle_color = triangle_patch.simple_query("What color is the triangle?")',
        "return bool_to_yesno(square_color == triangle_color)")),
)

SHAPES_REFER_SEEDS: tuple[tuple[str, str], ...] = (
    ("large yellow star", _p('return image_patch.find("large yellow star")[0]', returns="ImagePatch")),
    ("the circle to the right of the green square",
     _p('square_patch = image_patch.find("green square")[0]',
        'circle_patches = [patch for patch in image_patch.find("circle") '
        "if patch.horizontal_center > square_patch.horizontal_center]",
        "return circle_patches[0]", returns="ImagePatch")),
    ("the small object below the blue triangle",
     _p('triangle_patch = image_patch.find("blue triangle")[0]',
        'object_patches = [patch for patch in image_patch.find("small object") '
        "if patch.vertical_center < triangle_patch.vertical_center]",
        "return object_patches[0]", returns="ImagePatch")),
)

SHAPES_CAPTION_SEEDS: tuple[tuple[str, str], ...] = (
    ('Which caption describes the image: "a red star and a blue circle" or "a blue star and a red circle"?',
     _p('if image_patch.exists("red star") and image_patch.exists("blue circle"):',
        '    return "a red star and a blue circle"', 'return "a blue star and a red circle"')),
    (('Which caption describes the image: "a green square above a purple triangle" or '
      '"a green square below a purple triangle"?'),
     _p("for square_patch in image_patch.find(\"green square\"):",
        "    for triangle_patch in image_patch.find(\"purple triangle\"):",
        "        if square_patch.vertical_center > triangle_patch.vertical_center:",
        '            return "a green square above a purple triangle"',
        'return "a green square below a purple triangle"')),
)

GQA_SEEDS: tuple[tuple[str, str], ...] = (
    ("Is there a cat or a dog in the picture?",
     _p('return bool_to_yesno(image_patch.exists("cat") or image_patch.exists("dog"))')),
    ("What color is the car to the left of the man?",
     _p('man_patch = image_patch.find("man")[0]',
        'car_patches = [patch for patch in image_patch.find("car") '
        "if patch.horizontal_center < man_patch.horizontal_center]",
        "if not car_patches:", '    return image_patch.simple_query("What color is the car?")',
        'return car_patches[0].simple_query("What color is the car?")')),
    ("Is the cup made of glass or plastic?",
     _p('cup_patches = image_patch.find("cup")', "if not cup_patches:",
        '    return image_patch.simple_query("Is the cup made of glass or plastic?")',
        'return cup_patches[0].best_text_match(["glass", "plastic"])')),
    ("Are the shirt and the pants the same color?",
     _p('shirt_patches = image_patch.find("shirt")', 'pants_patches = image_patch.find("pants")',
        "if not shirt_patches or not pants_patches:",
        '    return image_patch.simple_query("Are the shirt and the pants the same color?")',
        'shirt_color = shirt_patches[0].simple_query("What color is the shirt?")',
        'pants_color = pants_patches[0].simple_query("What color are the pants?")',
        "return bool_to_yesno(shirt_color == pants_color)")),
    ("Which side is the lamp on?",
     _p('lamp_patches = image_patch.find("lamp")', "if not lamp_patches:", '    return "no"',
        'return "left" if lamp_patches[0].horizontal_center < image_patch.horizontal_center else "right"')),
    ("Is the umbrella open?",
     _p('umbrella_patches = image_patch.find("umbrella")', "if not umbrella_patches:", '    return "no"',
        'return bool_to_yesno(umbrella_patches[0].verify_property("umbrella", "open"))')),
)

REFCOCO_SEEDS: tuple[tuple[str, str], ...] = (
    ("man in red shirt",
     _p('man_patches = image_patch.find("man")', "if not man_patches:", "    return image_patch",
        'return best_image_match(man_patches, ["man in red shirt"])', returns="ImagePatch")),
    ("left zebra",
     _p('zebra_patches = image_patch.find("zebra")', "if not zebra_patches:", "    return image_patch",
        "zebra_patches.sort(key=lambda patch: patch.horizontal_center)", "return zebra_patches[0]",
        returns="ImagePatch")),
    ("the largest pizza slice",
     _p('slice_patches = image_patch.find("pizza slice")', "if not slice_patches:", "    return image_patch",
        "return max(slice_patches, key=lambda patch: patch.area)", returns="ImagePatch")),
    ("cup closest to the laptop",
     _p('cup_patches = image_patch.find("cup")', 'laptop_patches = image_patch.find("laptop")',
        "if not cup_patches:", "    return image_patch", "if not laptop_patches:", "    return cup_patches[0]",
        "return min(cup_patches, key=lambda patch: distance(patch, laptop_patches[0]))", returns="ImagePatch")),
)

SUGARCREPE_SEEDS: tuple[tuple[str, str], ...] = (
    ('Which caption describes the image: "a black dog on a white couch" or "a white dog on a black couch"?',
     _p('return image_patch.best_text_match(["a black dog on a white couch", "a white dog on a black couch"])')),
    ('Which caption describes the image: "a man riding a horse" or "a horse riding a man"?',
     _p('man_patches = image_patch.find("man")', 'horse_patches = image_patch.find("horse")',
        "if man_patches and horse_patches and man_patches[0].vertical_center > horse_patches[0].vertical_center:",
        '    return "a man riding a horse"',
        'return image_patch.best_text_match(["a man riding a horse", "a horse riding a man"])')),
    ('Which caption describes the image: "two cats on a bed" or "two dogs on a bed"?',
     _p('if len(image_patch.find("cat")) >= 2:', '    return "two cats on a bed"',
        'return image_patch.best_text_match(["two cats on a bed", "two dogs on a bed"])')),
    ('Does this caption describe the image: "a red bus next to a tree"?',
     _p('bus_patches = image_patch.find("bus")', "if not bus_patches:", '    return "no"',
        'is_red = bus_patches[0].verify_property("bus", "red")',
        'return bool_to_yesno(is_red and image_patch.exists("tree"))')),
)

#: bring-your-own data: questions and grounding, the two shapes a JSONL line can take
JSONL_SEEDS: tuple[tuple[str, str], ...] = GQA_SEEDS[:4] + REFCOCO_SEEDS[:2]
