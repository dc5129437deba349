"""Time ``solov2 inspect`` on a generated annotation file the size of COCO val2017.

    python benchmarks/inspect_coco_size.py --images 5000 --instances 36000 --config light_448_r18

Writes OUT/val2017_like.json (``--images`` 640x480-ish entries, about ``--instances``
polygons of 8..40 points, sizes spread log-uniformly from 4 to 400 px, 80 categories) and
an empty placeholder file per image (inspect reads no pixels), then runs the inspection and
prints the seconds it took. No image is decoded, so the placeholders are never opened.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without installing


def synthetic_coco(num_images: int, num_instances: int, seed: int = 0) -> dict:
    """A COCO instances dict with random star-shaped polygons (no image files)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([(480, 640), (640, 480), (427, 640), (640, 427), (375, 500)], num_images)
    per_image = rng.multinomial(num_instances, np.full(num_images, 1 / num_images))
    images, annotations = [], []
    for i, ((h, w), count) in enumerate(zip(sizes.tolist(), per_image.tolist())):
        images.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": w, "height": h})
        radius = np.exp(rng.uniform(np.log(2), np.log(200), count))
        for r in radius.tolist():
            r = min(r, min(h, w) / 2 - 1)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            points = int(rng.integers(8, 41))
            angles = np.sort(rng.uniform(0, 2 * np.pi, points))
            radii = r * rng.uniform(0.6, 1.0, points)
            poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(rng.integers(1, 81)), "iscrowd": 0,
                                "segmentation": [poly.ravel().round(2).tolist()],
                                "bbox": [round(float(x0), 2), round(float(y0), 2),
                                         round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                                "area": float((x1 - x0) * (y1 - y0))})
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, 81)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_dataset(out: Path, num_images: int, num_instances: int, seed: int = 0) -> tuple[Path, Path]:
    """The annotation file and a folder of 1x1 placeholder images; returns both paths."""
    data = synthetic_coco(num_images, num_instances, seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    placeholder = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()
    for entry in data["images"]:
        (images / entry["file_name"]).write_bytes(placeholder)  # an image file's signature, no pixels
    ann = out / "val2017_like.json"
    ann.write_text(json.dumps(data))
    return ann, images


def main() -> int:
    from solov2.config import load_config
    from solov2.diagnostics.inspection import inspect_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=36000)
    parser.add_argument("--config", default="light_448_r18")
    parser.add_argument("--out", default="runs/inspect_bench")
    parser.add_argument("--all-scales", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    ann, images = write_dataset(out, args.images, args.instances)
    start = time.perf_counter()
    result = inspect_dataset(load_config(args.config), ann, images, out / "report", all_scales=args.all_scales,
                             plots=True, progress=False)
    seconds = time.perf_counter() - start
    print("\n".join(result.summary[-3:]))
    print(f"inspect of {args.images} images, {result.report['dataset']['usable_instances']} instances "
          f"({args.config}, {len(result.report['assignment'])} assignment scales): {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
