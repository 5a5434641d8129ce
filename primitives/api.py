"""The built-in model-backed primitives: ViperGPT's ImagePatch methods and helpers.

Each declaration's signature and docstring is the text the LLM reads in the prompt's API
section. Bodies are left empty: each profile implements them in its own way (a detector,
contour analysis, or a scene graph lookup).
"""

from __future__ import annotations

from viprog.primitives.patch import ImagePatch
from viprog.primitives.spec import primitive


@primitive
def find(self, object_name: str) -> list[ImagePatch]:
    """Returns a list of ImagePatch objects matching object_name contained in the crop,
    if any are found. Otherwise, returns an empty list.

    >>> # return the foo
    >>> def execute_command(image) -> list[ImagePatch]:
    >>>     image_patch = ImagePatch(image)
    >>>     foo_patches = image_patch.find("foo")
    >>>     return foo_patches
    """


@primitive
def exists(self, object_name: str) -> bool:
    """Returns True if the object specified by object_name is found in the image, and
    False otherwise.

    >>> # Are there both foos and garply bars in the photo?
    >>> def execute_command(image) -> str:
    >>>     image_patch = ImagePatch(image)
    >>>     is_foo = image_patch.exists("foo")
    >>>     is_garply_bar = image_patch.exists("garply bar")
    >>>     return bool_to_yesno(is_foo and is_garply_bar)
    """


@primitive
def verify_property(self, object_name: str, attribute: str) -> bool:
    """Returns True if the object possesses the property, and False otherwise. Differs
    from 'exists' in that it presupposes the existence of the object specified by
    object_name, instead checking whether the object possesses the property.

    >>> # Do the letters have blue color?
    >>> def execute_command(image) -> str:
    >>>     image_patch = ImagePatch(image)
    >>>     letters_patches = image_patch.find("letters")
    >>>     # Question assumes only one letter patch
    >>>     return bool_to_yesno(letters_patches[0].verify_property("letters", "blue"))
    """


@primitive
def best_text_match(self, option_list: list[str]) -> str:
    """Returns the string that best matches the image.

    >>> # Is the foo gold or white?
    >>> def execute_command(image) -> str:
    >>>     image_patch = ImagePatch(image)
    >>>     foo_patches = image_patch.find("foo")
    >>>     # Question assumes one foo patch
    >>>     return foo_patches[0].best_text_match(["gold", "white"])
    """


@primitive
def simple_query(self, question: str) -> str:
    """Returns the answer to a basic question asked about the image. If no question is
    provided, returns the answer to "What is this?".

    >>> # Which kind of baz is not fredding?
    >>> def execute_command(image) -> str:
    >>>     image_patch = ImagePatch(image)
    >>>     baz_patches = image_patch.find("baz")
    >>>     for baz_patch in baz_patches:
    >>>         if not baz_patch.verify_property("baz", "fredding"):
    >>>             return baz_patch.simple_query("What is this baz?")
    """


@primitive
def compute_depth(self) -> float:
    """Returns the median depth of the image crop (larger is farther from the camera).

    >>> # the second foo from the camera
    >>> def execute_command(image) -> ImagePatch:
    >>>     image_patch = ImagePatch(image)
    >>>     foo_patches = image_patch.find("foo")
    >>>     foo_patches.sort(key=lambda foo: foo.compute_depth())
    >>>     return foo_patches[1]
    """


@primitive(owner="function")
def best_image_match(list_patches: list[ImagePatch], content: list[str], return_index: bool = False) -> ImagePatch:
    """Returns the patch most likely to contain the content (its index in list_patches
    with return_index=True).

    >>> # the patch most likely to show a bar
    >>> def execute_command(image) -> ImagePatch:
    >>>     image_patch = ImagePatch(image)
    >>>     return best_image_match(image_patch.find("thing"), ["bar"])
    """


@primitive
def llm_query(self, question: str, long_answer: bool = True) -> str:
    """Answers a text question with a language model, for knowledge the image cannot
    show (the image is not seen). The question is usually a formatted string with a
    variable in it; with long_answer=False the answer is a few words.

    >>> # What is the food made of?
    >>> def execute_command(image) -> str:
    >>>     image_patch = ImagePatch(image)
    >>>     food_name = image_patch.find("food")[0].simple_query("What is this food?")
    >>>     return image_patch.llm_query(f"What is {food_name} made of?", long_answer=False)
    """
