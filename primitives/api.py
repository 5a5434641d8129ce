"""The built-in model-backed primitives: the `ImagePatch` methods and helpers that need a model.

Names, signatures and meanings follow ViperGPT's API, so its programs run here unchanged;
the docstrings and examples are ours, written for the questions our tasks ask. Each
declaration's signature and docstring is the text the LLM reads in the prompt's API
section. Bodies are left empty: each profile implements them in its own way (a detector,
contour analysis, or a scene graph lookup).
"""

from __future__ import annotations

from viprog.primitives.patch import ImagePatch
from viprog.primitives.spec import primitive


@primitive
def find(self, object_name: str) -> list[ImagePatch]:
    """All objects inside this patch that object_name describes, one patch each; [] when
    there are none. The name may carry size and colour words ("small red circle"); a
    generic noun ("object", "thing") stands for any object.

    Example:
        # Query: How many squares are below the green star?
        def execute_command(image):
            image_patch = ImagePatch(image)
            star_patch = image_patch.find("green star")[0]
            square_patches = [patch for patch in image_patch.find("square") if patch.vertical_center < star_patch.vertical_center]
            return len(square_patches)
    """


@primitive
def exists(self, object_name: str) -> bool:
    """Whether at least one object that object_name describes is inside this patch, i.e.
    len(self.find(object_name)) > 0.

    Example:
        # Query: Is there a yellow triangle or a large ball?
        def execute_command(image):
            image_patch = ImagePatch(image)
            return bool_to_yesno(image_patch.exists("yellow triangle") or image_patch.exists("large ball"))
    """


@primitive
def verify_property(self, object_name: str, property: str) -> bool:
    """Whether the object_name this patch shows has the property (a colour, a size, a
    shape or another adjective). Call it on a patch that find returned: it assumes the
    object is there, where exists asks whether it is.

    Example:
        # Query: Is the large ball green?
        def execute_command(image):
            image_patch = ImagePatch(image)
            ball_patch = image_patch.find("large ball")[0]
            return bool_to_yesno(ball_patch.verify_property("ball", "green"))
    """


@primitive
def best_text_match(self, option_list: list[str], prefix: str | None = None) -> str:
    """The one string of option_list that describes this patch best, returned as given:
    how to answer an either-or question.

    Example:
        # Query: Is the red object a circle or a triangle?
        def execute_command(image):
            image_patch = ImagePatch(image)
            object_patch = image_patch.find("red object")[0]
            return object_patch.best_text_match(["circle", "triangle"])
    """


@primitive
def simple_query(self, question: str = "What is this?") -> str:
    """A short answer (a word or a number) to a plain question about what this patch
    shows, such as its colour, shape or size. Find the object first and ask its patch
    about one property at a time.

    Example:
        # Query: What size is the green pyramid?
        def execute_command(image):
            image_patch = ImagePatch(image)
            pyramid_patch = image_patch.find("green pyramid")[0]
            return pyramid_patch.simple_query("What size is the pyramid?")
    """


@primitive
def compute_depth(self) -> float:
    """How far this patch lies from the camera: the median of its depth map, larger
    meaning farther away.

    Example:
        # Query: the chair nearest to the camera
        def execute_command(image):
            image_patch = ImagePatch(image)
            chair_patches = image_patch.find("chair")
            return min(chair_patches, key=lambda patch: patch.compute_depth())
    """


@primitive(owner="function")
def best_image_match(list_patches: list[ImagePatch], content: list[str], return_index: bool = False) -> ImagePatch:
    """Of the patches in list_patches, the one that the descriptions in content fit best;
    with return_index=True, its position in the list instead of the patch.

    Example:
        # Query: the cat sleeping on the sofa
        def execute_command(image):
            image_patch = ImagePatch(image)
            return best_image_match(image_patch.find("cat"), ["cat sleeping on a sofa"])
    """


@primitive
def llm_query(self, question: str, long_answer: bool = True) -> str:
    """Asks a language model that never sees the image, for facts a picture cannot show.
    Name the thing in the question yourself, e.g. with an f-string around what
    simple_query told you; long_answer=False keeps the reply to a few words.

    Example:
        # Query: In which country was this dish first cooked?
        def execute_command(image):
            image_patch = ImagePatch(image)
            dish = image_patch.find("dish")[0].simple_query("What dish is this?")
            return image_patch.llm_query(f"In which country was {dish} first cooked?", long_answer=False)
    """
