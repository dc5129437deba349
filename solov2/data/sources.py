"""Turning command-line inputs (files, folders, globs) into image and video lists
(``solov2_runtime.sources``, shared with the PyTorch-free runtime)."""

from solov2_runtime.sources import Source, VideoReadError, collect_sources, open_video, read_frames

__all__ = ["Source", "VideoReadError", "collect_sources", "open_video", "read_frames"]
