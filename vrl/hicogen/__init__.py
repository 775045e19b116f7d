"""HiCoGen: hierarchical prompts as scenes, and their decomposition (docs/algorithms.md, section 5).

Submodules are imported lazily by their users; importing `vrl.hicogen` loads no model.
"""

from vrl.hicogen.decompose import (
    DecompositionResult,
    LLMDecomposer,
    decompose_structured,
    decompose_template,
    extract_json_object,
)
from vrl.hicogen.scene import (
    Question,
    QuestionTarget,
    Relation,
    Scene,
    SceneValidationError,
    Subject,
    SynthesisUnit,
)

__all__ = [
    "DecompositionResult",
    "LLMDecomposer",
    "Question",
    "QuestionTarget",
    "Relation",
    "Scene",
    "SceneValidationError",
    "Subject",
    "SynthesisUnit",
    "decompose_structured",
    "decompose_template",
    "extract_json_object",
]
