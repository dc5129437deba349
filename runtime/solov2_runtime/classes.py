"""The 80 COCO category names and their dataset ids (1..90 with gaps), in label order."""

COCO_CLASS_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]

COCO_CATEGORY_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
]


def class_names_and_ids(num_classes: int, names: list[str], ids: list[int]) -> tuple[list[str], list[int]]:
    """Names and dataset ids for each label: the model's own if recorded, COCO's for 80 classes."""
    if not names:
        names = list(COCO_CLASS_NAMES) if num_classes == 80 else [f"class_{i}" for i in range(num_classes)]
    if not ids:
        ids = list(COCO_CATEGORY_IDS) if num_classes == 80 else list(range(1, num_classes + 1))
    if len(names) != num_classes or len(ids) != num_classes:
        raise ValueError(
            f"model.class_names ({len(names)}) and model.category_ids ({len(ids)}) must have "
            f"model.num_classes ({num_classes}) entries"
        )
    return names, ids
