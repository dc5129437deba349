"""Dataset statistics: images, instances, classes, crowd share and the data check's findings.

The dataset is read by ``solov2.data.coco.CocoInstances``, the class training uses, so the
data check (``DatasetReport``) is the one ``solov2 train`` prints. ``read_images=True`` also
decodes every usable image and compares its size with the annotation file's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm import tqdm

from ..data.coco import CROWD, CocoInstances
from ..data.image_io import ImageReadError, read_image


def class_table(dataset: CocoInstances) -> list[dict[str, Any]]:
    """Per class (label order): name, dataset category id, usable instances, images with one."""
    num = len(dataset.category_ids)
    labels = [r.labels for r in dataset.records]
    instances = np.bincount(np.concatenate(labels), minlength=num) if labels else np.zeros(num, np.int64)
    images = np.zeros(num, np.int64)
    for lb in labels:
        images[np.unique(lb)] += 1
    return [
        {"label": i, "name": dataset.class_names[i], "category_id": int(dataset.category_ids[i]),
         "instances": int(instances[i]), "images": int(images[i])}
        for i in range(num)
    ]


def check_image_files(dataset: CocoInstances, progress: bool = False) -> dict[str, Any]:
    """Decode every usable image: unreadable files and sizes that differ from the annotations."""
    unreadable, mismatched = [], []
    for record in tqdm(dataset.records, desc="read images", unit="img", disable=not progress, dynamic_ncols=True):
        try:
            h, w = read_image(record.path).shape[:2]
        except ImageReadError as err:
            unreadable.append(str(err))
            continue
        if (h, w) != (record.height, record.width):
            mismatched.append(f"{record.path}: {w}x{h}, annotations say {record.width}x{record.height}")
    return {"unreadable": len(unreadable), "size_mismatch": len(mismatched),
            "examples": (unreadable + mismatched)[:5]}


def dataset_statistics(dataset: CocoInstances, read_images: bool = False, progress: bool = False) -> dict[str, Any]:
    """The ``dataset`` section of report.json."""
    report = dataset.report
    stats: dict[str, Any] = {
        "ann_file": report.ann_file,
        "images": report.num_images,
        "annotations": report.num_annotations,
        "categories": report.num_categories,
        "usable_images": report.usable_images,
        "usable_instances": report.usable_instances,
        "crowd": int(report.counts.get(CROWD, 0)),
        "crowd_share": report.counts.get(CROWD, 0) / max(report.num_annotations, 1),
        "data_check": report.lines(),
        "problems": {kind: int(count) for kind, count in report.counts.items()},
        "classes": class_table(dataset),
    }
    if read_images:
        stats["image_files"] = check_image_files(dataset, progress)
    return stats
