"""Writing files atomically: a crash mid-write leaves the previous file whole
(``solov2_runtime.atomic``, shared with the PyTorch-free runtime)."""

from solov2_runtime.atomic import atomic_open, write_json_atomic

__all__ = ["atomic_open", "write_json_atomic"]
