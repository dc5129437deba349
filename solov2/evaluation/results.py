"""Predictions as COCO result records: RLE masks (``counts`` as str) and ``[x, y, w, h]`` boxes.

``to_coco_records(result, image_id=7)`` gives the records ``pycocotools``' ``COCO.loadRes``
reads; ``to_coco_records(result, file_name="a.jpg")`` names the image by its file instead.
The encoder is ``solov2_runtime.records`` (NumPy, equal to pycocotools' output), shared with
the PyTorch-free runtime.
"""

from solov2_runtime.records import InstanceResult, encode_masks, mask_boxes, to_coco_records, xyxy_boxes

__all__ = ["InstanceResult", "encode_masks", "mask_boxes", "to_coco_records", "xyxy_boxes"]
