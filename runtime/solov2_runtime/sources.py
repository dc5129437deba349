"""Turning command-line inputs (files, folders, globs) into image and video lists."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .image_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS


@dataclass(frozen=True)
class Source:
    path: Path
    # Where outputs for this file go, relative to the output folder (keeps folder structure).
    relative: Path
    is_video: bool


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def collect_sources(inputs: list[str]) -> tuple[list[Source], list[str]]:
    """Expand files, folders (recursively) and glob patterns. Returns (sources, problems).

    A folder keeps its name and inner structure in the outputs, and so do the matches of a
    glob below the pattern's fixed leading folders ('shots/**/*.png': shots/a/b.png); a file
    given directly is named by its file name. Inputs that match nothing are reported as problems.
    """
    sources: list[Source] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(path: Path, relative: Path) -> None:
        kind = _kind(path)
        resolved = path.resolve()
        if kind is None or resolved in seen:
            return
        seen.add(resolved)
        sources.append(Source(path, relative, kind == "video"))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))
            if not files:
                problems.append(f"{item}: folder contains no images or videos")
            for file in files:
                add(file, Path(path.resolve().name) / file.relative_to(path))
        elif path.is_file():
            if _kind(path) is None:
                problems.append(
                    f"{item}: unsupported file type '{path.suffix}' (images: "
                    f"{' '.join(IMAGE_EXTENSIONS)}; videos: {' '.join(VIDEO_EXTENSIONS)})"
                )
            add(path, Path(path.name))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            matches = [p for p in matches if p.is_file() and _kind(p)]
            if not matches:
                problems.append(f"{item}: pattern matches no images or videos")
            base = _glob_base(item)
            for match in matches:
                add(match, _under_base(match, base))
        else:
            problems.append(f"{item}: no such file or folder")
    return _deduplicate_outputs(sources), problems


def _glob_base(pattern: str) -> Path:
    """The pattern's leading folders that hold no wildcard ('' when the first part has one)."""
    parts = Path(pattern).parts
    fixed = parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]
    return Path(*fixed) if fixed else Path()


def _under_base(match: Path, base: Path) -> Path:
    """Where a glob match's outputs go: the base folder's name and the path below it (the
    file name alone when that would leave the output folder)."""
    try:
        inner = match.relative_to(base) if base != Path() else match
    except ValueError:
        return Path(match.name)
    if inner.is_absolute() or ".." in inner.parts:
        return Path(match.name)
    return Path(base.resolve().name) / inner if base != Path() else inner


def _deduplicate_outputs(sources: list[Source]) -> list[Source]:
    """Give files that would write to the same output name distinct names (a.jpg, a_1.jpg)."""
    used: set[Path] = set()
    result = []
    for source in sources:
        relative, n = source.relative, 0
        while relative.with_suffix("") in used:
            n += 1
            relative = source.relative.with_name(f"{source.relative.stem}_{n}{source.relative.suffix}")
        used.add(relative.with_suffix(""))
        result.append(Source(source.path, relative, source.is_video))
    return result


class VideoReadError(OSError):
    """A video file that cannot be opened or decoded."""


def open_video(path: Path) -> tuple[cv2.VideoCapture, float, int, tuple[int, int]]:
    """Open a video; returns (capture, fps, frame count, (width, height))."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoReadError(f"{path}: cannot open video (corrupt or unsupported codec)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return capture, fps, count, size


def read_frames(capture: cv2.VideoCapture, stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, BGR frame) for every ``stride``-th frame."""
    index = 0
    while True:
        ok = capture.grab()
        if not ok:
            return
        if index % stride == 0:
            ok, frame = capture.retrieve()
            if not ok:
                return
            yield index, frame
        index += 1
