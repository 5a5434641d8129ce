"""viprog.primitives: the ImagePatch API that programs see, and the profiles behind it.

Importing this package registers the built-in primitive specs and the profile names; it
imports no model library and loads no weights.
"""

from viprog.primitives import api as _api  # noqa: F401  (registers the built-in specs)
from viprog.primitives.patch import (
    FUNCTIONS,
    ImagePatch,
    ImageRef,
    PrimitiveError,
    bool_to_yesno,
    coerce_to_numeric,
    distance,
    set_transport,
)
from viprog.primitives.profile import PROFILES, Call, PatchData, Profile, get_profile
from viprog.primitives.spec import PrimitiveSpec, all_specs, get_spec, primitive

__all__ = [
    "FUNCTIONS", "PROFILES", "Call", "ImagePatch", "ImageRef", "PatchData", "PrimitiveError",
    "PrimitiveSpec", "Profile", "all_specs", "bool_to_yesno", "coerce_to_numeric", "distance",
    "get_profile", "get_spec", "primitive", "set_transport",
]

# Built-in profiles, registered lazily: naming them imports nothing (no cv2, no torch).
PROFILES.add("neural", "viprog.primitives.backends.neural:NeuralProfile",
             help="OWLv2 or ultralytics YOLO detector, open_clip CLIP, BLIP VQA, depth, optional LLM (lazy, batched)")
PROFILES.add("shapes", "viprog.primitives.backends.shapes:ShapesProfile",
             help="classic computer vision that perceives flat shapes (OpenCV / scikit-image)")
PROFILES.add("scene-graph", "viprog.primitives.backends.scene_graph:SceneGraphProfile",
             help="answers from the example's annotations (separates program from perception errors)")
