"""The 80 COCO category names and their dataset ids, in label order (``solov2_runtime.classes``,
shared with the PyTorch-free runtime)."""

from solov2_runtime.classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES, class_names_and_ids

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASS_NAMES", "class_names_and_ids"]
