"""Mask AP of each backend on a COCO-format set, and each backend's agreement with PyTorch fp32.

    python benchmarks/backends_ap.py --weights runs/demo/train/final.pth --onnx model.onnx \\
        --int8 model.int8.onnx --ann runs/demo/data/val.json --images runs/demo/data/val

Predicts every image with PyTorch fp32 (the checkpoint), ONNX Runtime and OpenVINO on the fp32
and the INT8 .onnx, scores each with the project's COCO evaluation (``coco_metrics``, the
model's categories matched as ``solov2 eval`` does) and prints mask AP, its drift from
PyTorch fp32 and ``agreement_figures`` (matched instances, mask IoU, score differences).
"""

from __future__ import annotations

import argparse
import json

import torch

from solov2.benchmark.agreement import agreement_figures
from solov2.data.image_io import read_image
from solov2.engine.evaluate import match_categories
from solov2.engine.predictor import Predictor
from solov2.evaluation.coco_eval import coco_metrics, load_coco
from solov2.evaluation.results import to_coco_records
from solov2.export.onnx_runtime import OnnxPredictor
from solov2.export.openvino_backend import OpenVinoPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--int8", required=True)
    parser.add_argument("--ann", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    coco = load_coco(args.ann)
    infos = [coco.imgs[i] for i in sorted(coco.getImgIds())]
    images = [read_image(f"{args.images}/{info['file_name']}") for info in infos]
    backends = {
        "pytorch": Predictor.from_config(None, args.weights, batch_size=1),
        "onnxruntime": OnnxPredictor(args.onnx, batch_size=1, num_threads=args.threads),
        "openvino": OpenVinoPredictor(args.onnx, batch_size=1, num_threads=args.threads),
        "onnxruntime-int8": OnnxPredictor(args.int8, batch_size=1, num_threads=args.threads),
        "openvino-int8": OpenVinoPredictor(args.int8, batch_size=1, num_threads=args.threads),
    }
    mapping, _ = match_categories(backends["pytorch"].cfg, list(coco.cats.values()))
    out, reference = {}, None
    for name, predictor in backends.items():
        results = predictor.predict_batch(images)
        records = [r for info, res in zip(infos, results)
                   for r in to_coco_records(res, image_id=info["id"], category_ids=mapping)]
        metrics = coco_metrics(coco, records, kinds=("mask",))
        reference = reference or results
        out[name] = {"mask_AP": metrics["mask_AP"], "mask_AP50": metrics["mask_AP50"],
                     "agreement": agreement_figures(reference, results)}
        a = out[name]["agreement"]
        print(f"{name:<18} mask AP {100 * metrics['mask_AP']:.2f} (drift {100 * (metrics['mask_AP'] - out['pytorch']['mask_AP']):+.2f})"
              f" AP50 {100 * metrics['mask_AP50']:.2f}; instances {a['instances']}; fp32 scored >= 0.3: "
              f"{a['confident_fp32_instances']}, matched {a['confident_matched_fraction']:.3f}, at IoU >= 0.9 "
              f"{a['confident_matched_at_close_iou']:.3f}, IoU min {a['confident_mask_iou']['min']:.3f}; "
              f"|score diff| mean {a['matched_score_abs_diff']['mean']:.4f} max {a['matched_score_abs_diff']['max']:.4f}",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
