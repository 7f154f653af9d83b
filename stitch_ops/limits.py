"""Size limits on what another party sends: a received model may be built to exhaust memory or disk.

A zip whose 200 KB of zeros inflate to 200 MB (or 200 GB), a 2 GB "weights" file, a
``spatial_shape`` of ``[100000, 100000]``: each is refused before it is extracted, read
or allocated. The limits are generous for real nnU-Net models (a 3-D checkpoint with its
optimizer state is a few hundred MB) and each can be set through an environment variable:

=============================  =====================================================  =======
variable                       what it caps                                           default
=============================  =====================================================  =======
``STITCH_OPS_MAX_FILE_MB``     one file or zip entry (weights, checkpoints; and the   1024
                               memory a network described by the plans may take)
``STITCH_OPS_MAX_TOTAL_MB``    everything extracted from one archive, or a folder's   4096
                               files
``STITCH_OPS_MAX_JSON_MB``     one JSON file (plans, dataset.json, configs)           16
``STITCH_OPS_MAX_RATIO``       a zip entry's size over its compressed size            200
``STITCH_OPS_MAX_ENTRIES``     entries in one archive                                 10000
``STITCH_OPS_MAX_VOXELS``      the voxels of a declared input shape a check pushes    262144
                               through the network (64**3, 512**2)
=============================  =====================================================  =======

Example::

    STITCH_OPS_MAX_FILE_MB=50 stitch-ops bundle verify received.zip
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stitch_ops.errors import InputFileError, UserError

__all__ = ["Limits", "TooLargeError", "check_file_size", "limits"]

MB = 1024 * 1024
_VARIABLES = {"max_file_bytes": ("STITCH_OPS_MAX_FILE_MB", 1024, MB),
              "max_total_bytes": ("STITCH_OPS_MAX_TOTAL_MB", 4096, MB),
              "max_json_bytes": ("STITCH_OPS_MAX_JSON_MB", 16, MB),
              "max_ratio": ("STITCH_OPS_MAX_RATIO", 200, 1),
              "max_entries": ("STITCH_OPS_MAX_ENTRIES", 10000, 1),
              "max_voxels": ("STITCH_OPS_MAX_VOXELS", 64 ** 3, 1)}
# entries smaller than this are never refused for their compression ratio (a small JSON of
# repeated keys compresses well and cannot exhaust anything)
RATIO_FLOOR_BYTES = MB


class TooLargeError(InputFileError):
    """A received file, archive or declared shape is over a size limit."""


@dataclass(frozen=True)
class Limits:
    """The size limits in force (see the module docstring); bytes unless named otherwise."""

    max_file_bytes: int
    max_total_bytes: int
    max_json_bytes: int
    max_ratio: float
    max_entries: int
    max_voxels: int

    def variable(self, name: str) -> str:
        """The environment variable that sets limit ``name`` (for messages)."""
        return _VARIABLES[name][0]

    def refuse(self, what: str, size: float, name: str) -> TooLargeError:
        """The error for ``what`` of ``size`` over limit ``name``, naming the variable that raises it."""
        variable, _, unit = _VARIABLES[name]
        limit = getattr(self, name)
        if unit == MB and limit >= MB:
            shown = f"{size / MB:.1f} MB, more than the {limit / MB:g} MB allowed"
        elif unit == MB:
            shown = f"{round(size):,} bytes, more than the {limit:,} bytes allowed"
        else:
            shown = f"{round(size):,}, more than the {limit:,g} allowed"
        return TooLargeError(f"{what} is {shown} ({variable}); ask the sender what it holds, or raise "
                             f"{variable} if you expect it")


def limits() -> Limits:
    """The limits of the environment (read at each call, so a test or a user can change them)."""
    values = {}
    for name, (variable, default, unit) in _VARIABLES.items():
        text = os.environ.get(variable)
        try:
            number = float(text) if text is not None else default
        except ValueError:
            raise UserError(f"{variable}={text!r} is not a number; expected e.g. {variable}={default}") from None
        if number <= 0:
            raise UserError(f"{variable}={text!r} must be positive (default {default})")
        values[name] = number if name == "max_ratio" else int(number * unit)
    return Limits(**values)


def check_file_size(path: Path | str, name: str = "max_file_bytes") -> int:
    """The size of ``path``; refused when over limit ``name`` (before anything reads it).

    Raises:
        TooLargeError: naming the file, its size, the limit and the variable that sets it.
    """
    size = Path(path).stat().st_size
    current = limits()
    if size > getattr(current, name):
        raise current.refuse(str(path), size, name)
    return size
