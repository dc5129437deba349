"""The predict job (``solov2-runtime predict``, ``solov2 predict``): run a predictor over
images and videos and write overlays, annotated videos, masks and ``results.json``."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import cv2
import numpy as np

from .image_io import ImageReadError, read_image
from .progress import Progress
from .records import InstanceResult, to_coco_records
from .results_log import ResultsLog
from .sources import Source, VideoReadError, open_video, read_frames
from .visualize import draw_result


class BatchPredictor(Protocol):
    """What the job needs: ``Runtime`` and solov2's ``Predictor`` have it."""

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[InstanceResult]: ...

    def score_thresholds(self) -> tuple[float, float]:
        """``test.score_thr`` and ``test.update_thr`` in use (for the empty-image summary)."""
        ...


@dataclass
class PredictSummary:
    """What a predict job did; ``empty_line`` explains the images that got no instance."""

    out_dir: Path
    results_file: Path
    images: int = 0
    frames: int = 0
    videos: int = 0
    instances: int = 0
    failures: list[str] = field(default_factory=list)
    empty: int = 0  # images and frames without any instance
    best_empty_score: float = float("nan")  # highest category probability seen on those (nan: unknown)

    def count(self, result: InstanceResult) -> None:
        """Add one image's or frame's result to the counts."""
        self.instances += len(result)
        if len(result) == 0:
            self.empty += 1
            best = float(getattr(result, "best_score", float("nan")))
            if best == best and not self.best_empty_score >= best:
                self.best_empty_score = best

    def empty_line(self, score_thr: float, update_thr: float) -> str:
        """What the empty images were missing ('' when none was empty): the highest category
        score and the thresholds (``test.score_thr``, ``test.update_thr``) that would let it pass."""
        if not self.empty:
            return ""
        line = f"{self.empty} image(s)/frame(s) got no instance"
        best = self.best_empty_score
        if best == best:
            keep = math.floor(best * 1000) / 1000
            line += f"; the highest category score on them was {best:.4f} (test.score_thr is {score_thr:g})"
            line += f": test.score_thr={keep:g}" + (f" test.update_thr={keep:g}" if keep < update_thr else "")
            line += " would keep candidates there (mask scoring and Matrix NMS lower scores further)"
        return line


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during a predict job, after ``results.json`` was written for the inputs done."""

    def __init__(self, summary: PredictSummary):
        super().__init__(f"interrupted: {summary.results_file} holds the {summary.images} image(s) "
                         f"and {summary.frames} video frame(s) done")
        self.summary = summary


LOSSLESS_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")  # overlays of these inputs are PNG


def overlay_path(out_dir: Path, relative: Path) -> Path:
    """Where an image's overlay goes: PNG (lossless) for lossless inputs, JPEG otherwise."""
    lossless = relative.suffix.lower() in LOSSLESS_EXTENSIONS
    return (out_dir / relative).with_suffix(".png" if lossless else ".jpg")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (FFmpeg's and OpenCV's C-level messages) for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_video_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, str]:
    """A writer for ``path``: H.264 ('avc1', which browsers play) when this OpenCV build can
    open one, else 'mp4v'; returns (writer, codec). Raises OSError when neither opens.
    FFmpeg's messages about encoders it tried and could not use are not shown."""
    for codec in ("avc1", "mp4v"):
        with _quiet_stderr():
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, size)
        if writer.isOpened():
            return writer, codec
        writer.release()
    if path.is_file():
        path.unlink()
    raise OSError(f"{path}: OpenCV cannot open a video writer (avc1 or mp4v)")


def _video_writer_or_none(path: Path, fps: float, size: tuple[int, int],
                          fail: Callable[[str], None]) -> cv2.VideoWriter | None:
    """``open_video_writer``, or None after reporting why through ``fail``."""
    try:
        return open_video_writer(path, fps, size)[0]
    except OSError as err:
        fail(f"{err}; the video's frames are still predicted into results.json, without the "
             "annotated copy (check that the folder is writable, or use --no-overlays)")
        return None


def _save_masks(result: InstanceResult, folder: Path, stem: str, min_score: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (mask, name, score) in enumerate(zip(result.masks, result.class_names, result.scores)):
        if float(score) < min_score:
            continue
        safe = name.replace(" ", "_").replace("/", "_")
        cv2.imwrite(str(folder / f"{stem}_{i:03d}_{safe}.png"), mask.astype(np.uint8) * 255)


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    predictor: BatchPredictor,
    sources: list[Source],
    out_dir: str | Path,
    *,
    save_masks: bool = False,
    save_overlays: bool = True,
    frame_stride: int = 1,
    batch_size: int = 4,
    show_thr: float = 0.3,
    progress: bool = True,
) -> PredictSummary:
    """Predict every source; write overlays, annotated videos, masks and ``results.json``.

    Overlays, videos and masks show the instances scored ``show_thr`` or more; the results
    file keeps every instance the model returned.

    An unreadable file, or a video whose annotated copy cannot be written, is reported on
    stderr and in ``summary.failures``; the others go on. Each input's records are flushed to
    ``results.jsonl`` as it is done (``results_log``), and ``results.json`` is assembled from
    them (atomically) at the end, and also when the job stops early: on Ctrl-C it holds the
    inputs done and ``PredictInterrupted`` is raised; any other exception propagates. Killed
    outright, the job leaves ``results.jsonl`` with the inputs done.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_log = ResultsLog(out_dir)
    summary = PredictSummary(out_dir, results_log.results_file)
    try:
        _predict_all(predictor, sources, out_dir, summary, results_log, save_masks, save_overlays,
                     frame_stride, batch_size, show_thr, progress)
    except KeyboardInterrupt as err:
        results_log.close()
        raise PredictInterrupted(summary) from err
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            results_log.close()
        raise
    results_log.close()
    return summary


def _predict_all(predictor: BatchPredictor, sources: list[Source], out_dir: Path, summary: PredictSummary,
                 results_log: ResultsLog, save_masks: bool, save_overlays: bool, frame_stride: int,
                 batch_size: int, show_thr: float, progress: bool) -> None:
    """The job's loop; adds to ``results_log`` and ``summary`` as each input is done."""
    images = [s for s in sources if not s.is_video]
    videos = [s for s in sources if s.is_video]
    total = len(images) + sum(_frame_count(v.path, frame_stride) for v in videos)
    bar = Progress(total, desc="predict", unit="img", disable=not progress)

    def fail(message: str) -> None:
        summary.failures.append(message)
        bar.write(f"error: {message}")

    try:
        _predict_images(predictor, images, out_dir, summary, results_log, bar, fail, save_masks,
                        save_overlays, batch_size, show_thr)
        for source in videos:
            try:
                _predict_video(predictor, source, out_dir, summary, results_log, bar, fail, frame_stride,
                               batch_size, save_masks, save_overlays, show_thr)
                summary.videos += 1
            except VideoReadError as err:
                fail(str(err))
    finally:
        bar.close()


def _predict_images(predictor: BatchPredictor, images: list[Source], out_dir: Path, summary: PredictSummary,
                    results_log: ResultsLog, bar: Progress, fail: Callable[[str], None], save_masks: bool,
                    save_overlays: bool, batch_size: int, show_thr: float) -> None:
    """The image sources, ``batch_size`` at a time; records are written as each is done."""
    for chunk in _chunks(images, batch_size):
        loaded: list[tuple[Source, np.ndarray]] = []
        for source in chunk:
            try:
                loaded.append((source, read_image(source.path)))
            except ImageReadError as err:
                fail(str(err))
                bar.update(1)
        results = predictor.predict_batch([img for _, img in loaded]) if loaded else []
        for (source, image), result in zip(loaded, results):
            if save_overlays:
                target = overlay_path(out_dir, source.relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(target), draw_result(image, result, min_score=show_thr)):
                    fail(f"{target}: could not write the overlay")
            if save_masks:
                _save_masks(result, out_dir / "masks" / source.relative.parent, source.relative.stem, show_thr)
            results_log.add(to_coco_records(result, file_name=str(source.path)))
            summary.images += 1
            summary.count(result)
            bar.update(1)


def _frame_count(path: Path, stride: int) -> int:
    capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if capture.isOpened() else 0
    capture.release()
    return -(-count // stride)


def _predict_video(predictor: BatchPredictor, source: Source, out_dir: Path, summary: PredictSummary,
                   results_log: ResultsLog, bar: Progress, fail: Callable[[str], None], stride: int,
                   batch_size: int, save_masks: bool, save_overlays: bool, show_thr: float) -> None:
    """One video: its frames' records are written as they are done. When the annotated copy
    cannot be written, ``fail`` says so and the frames are still predicted."""
    capture, fps, _, (width, height) = open_video(source.path)
    writer = None
    target = (out_dir / source.relative).with_suffix(".mp4")
    frames_seen = 0
    try:
        if save_overlays:
            target.parent.mkdir(parents=True, exist_ok=True)
            writer = _video_writer_or_none(target, fps / stride, (width, height), fail)
        batch: list[tuple[int, np.ndarray]] = []
        frames = read_frames(capture, stride)
        while True:
            batch = [item for _, item in zip(range(batch_size), frames)]
            if not batch:
                break
            results = predictor.predict_batch([frame for _, frame in batch])
            for (index, frame), result in zip(batch, results):
                records = to_coco_records(result, file_name=str(source.path))
                results_log.add({**record, "frame": index} for record in records)
                if writer is not None:
                    writer.write(draw_result(frame, result, min_score=show_thr))
                if save_masks:
                    _save_masks(result, out_dir / "masks" / source.relative.with_suffix(""),
                                f"frame{index:06d}", show_thr)
                summary.count(result)
                summary.frames += 1
                frames_seen += 1
                bar.update(1)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames_seen == 0:
        target.unlink(missing_ok=True)
        raise VideoReadError(f"{source.path}: no frames could be decoded")
