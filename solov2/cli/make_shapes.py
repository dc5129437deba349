"""``solov2 make-shapes``: write a synthetic COCO-format instance segmentation dataset.

Coloured, textured circles, squares, triangles and stars on textured backgrounds, with sizes
spanning every FPN level's scale range, overlapping one another; each annotation is the
visible part of its shape after occlusion (compressed RLE). The same seed and options give
the same files.
"""

from __future__ import annotations

import argparse

from .common import fail, formatter

EXAMPLES = """examples:
  solov2 make-shapes --out data/shapes                        # 200 train + 50 val images, 160x160
  solov2 make-shapes --out data/shapes --train 1000 --val 200 --seed 7 --size 320x240
  solov2 train --config demo_shapes data.train_ann=data/shapes/train.json \\
      data.train_images=data/shapes/train data.val_ann=data/shapes/val.json data.val_images=data/shapes/val

outputs in --out: train/*.png and train.json, val/*.png and val.json (COCO instances format;
categories 1 circle, 2 square, 3 triangle, 4 star; file_name relative to train/ or val/).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shapes", help="write a synthetic COCO-format dataset of shapes", description=__doc__,
        epilog=EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=200, help="training images (default: %(default)s)")
    parser.add_argument("--val", type=int, default=50, help="validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--size", default="160", help="image size: N (square) or WxH (default: %(default)s)")
    parser.add_argument("--min-objects", type=int, default=2, help="fewest shapes per image (default: %(default)s)")
    parser.add_argument("--max-objects", type=int, default=4, help="most shapes per image (default: %(default)s)")
    parser.add_argument("--min-scale", type=float, default=0.125,
                        help="smallest shape, sqrt(box area) / short side (default: %(default)s)")
    parser.add_argument("--max-scale", type=float, default=0.8,
                        help="largest shape, sqrt(box area) / short side (default: %(default)s)")
    parser.add_argument("--min-visible", type=float, default=0.75,
                        help="least visible fraction of an occluded shape (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import ShapesOptions, make_shapes, parse_size

    try:
        options = ShapesOptions(parse_size(args.size), args.min_objects, args.max_objects,
                                args.min_scale, args.max_scale, args.min_visible)
        dataset = make_shapes(args.out, args.train, args.val, args.seed, options, progress=not args.quiet)
    except ValueError as err:
        return fail(str(err))
    except OSError as err:
        return fail(f"cannot write to {args.out}: {err}")
    print(f"train: {args.train} images in {dataset.train_images}, annotations {dataset.train_ann}")
    print(f"val:   {args.val} images in {dataset.val_images}, annotations {dataset.val_ann}")
    return 0
