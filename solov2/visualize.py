"""Drawing predictions: coloured masks, outlines, class names and scores
(``solov2_runtime.visualize``, shared with the PyTorch-free runtime)."""

from solov2_runtime.visualize import draw_instances, draw_result, instance_colour, panel

__all__ = ["draw_instances", "draw_result", "instance_colour", "panel"]
