"""VLM-R1 rule rewards: one parser, a registry of named rewards, and their weighted sum.

Importing this package registers every reward below, so ``get_reward("rec_iou")`` works after
``import vrl.rewards``. Typical use in a trainer::

    completions = [parse_completion(text, adapter.box_transform(sample)) for ...]
    result = WeightedReward(config.rewards)(completions, samples)  # .total, .components
"""

from vrl.geometry import position_relations, relation_holds, size_relations

from . import accuracy, detection, format, grounding, image, world  # noqa: F401  (registers the rewards)
from .accuracy import ACCURACY_METHODS, accuracy_score, check_accuracy_method
from .detection import average_precision, mean_average_precision
from .hierarchical import HierarchicalReward
from .hierarchical_detectors import GroundingDinoDetector, Owlv2Detector, load_detector
from .hierarchical_global import (
    CLIPScorer,
    PreferenceScorer,
    build_global_reward,
    make_clip_reward,
)
from .hierarchical_relation import RelationReward
from .hierarchical_subject import (
    DinoSimilarity,
    OpenVocabDetector,
    SubjectReward,
    VLMYesProbability,
)
from .parsing import (
    Box,
    BoxTransform,
    Completion,
    extract_answer,
    grid_to_original,
    iou,
    parse_boxes,
    parse_completion,
    parse_solution,
    resized_to_original,
)
from .registry import (
    RewardFn,
    RewardResult,
    UnknownRewardError,
    WeightedReward,
    available_rewards,
    get_reward,
    register_reward,
    reward_modality,
    unregister_reward,
)
from .world import (
    make_world_reward,
    world_checks,
    world_global,
    world_relation,
    world_shape,
    world_subject,
)

__all__ = [
    "ACCURACY_METHODS",
    "CLIPScorer",
    "DinoSimilarity",
    "GroundingDinoDetector",
    "HierarchicalReward",
    "OpenVocabDetector",
    "Owlv2Detector",
    "RelationReward",
    "SubjectReward",
    "VLMYesProbability",
    "PreferenceScorer",
    "build_global_reward",
    "make_clip_reward",
    "make_world_reward",
    "world_checks",
    "world_global",
    "world_relation",
    "world_shape",
    "world_subject",
    "position_relations",
    "relation_holds",
    "size_relations",
    "Box",
    "BoxTransform",
    "Completion",
    "RewardFn",
    "RewardResult",
    "UnknownRewardError",
    "WeightedReward",
    "accuracy_score",
    "available_rewards",
    "average_precision",
    "check_accuracy_method",
    "extract_answer",
    "get_reward",
    "grid_to_original",
    "iou",
    "load_detector",
    "mean_average_precision",
    "parse_boxes",
    "parse_completion",
    "parse_solution",
    "register_reward",
    "reward_modality",
    "resized_to_original",
    "unregister_reward",
]
