"""Peak memory of this process measured from a reset, so an earlier peak hides nothing.

``ru_maxrss`` (and ``VmHWM``) is the highest RSS since the process started: inside a
pytest run that has already loaded a large table, a new 200 MiB spike would not move
it. Writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS
(Linux), so the growth read afterwards belongs to the code under test alone.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")


def _kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    assert match is not None, f"{field} is not in /proc/self/status"
    return int(match.group(1))


class PeakGrowth:
    """``with PeakGrowth() as peak: ...`` then ``peak.mib``: how far the peak RSS rose above
    the RSS at entry while the block ran."""

    def __init__(self) -> None:
        self.base_kib = 0
        self.peak_kib = 0

    def __enter__(self) -> PeakGrowth:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        self.base_kib = _kib("VmRSS")
        assert _kib("VmHWM") <= self.base_kib + 1024, "the peak was not reset"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.peak_kib = _kib("VmHWM")

    @property
    def mib(self) -> float:
        """Growth of the peak above the RSS at entry, in MiB."""
        return (self.peak_kib - self.base_kib) / 1024
