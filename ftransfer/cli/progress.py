"""Progress bars: the only importer of tqdm (and only when stderr is a terminal).

Bars show decimal units (kB, MB, as the summaries' MB/s): one bar per file, and for
several files an overall bar with the total size and an ETA. Text printed while
bars are drawn (a UDP summary after each file) goes through ``write``, above the
bars, never into them.
"""

from __future__ import annotations

import sys

from ..client import Progress, escape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Bars(Progress):
    """tqdm bars on stderr (nothing at all when ``enabled`` is false)."""

    def __init__(self, files: int, total_bytes: int | None, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None
        self._overall: Any = None
        if enabled and files > 1:
            self._overall = self._new(f"{files} files", total_bytes, leave=True)

    @staticmethod
    def _new(name: str, total: int | None, *, leave: bool) -> Any:
        import shutil

        from tqdm import tqdm

        # A tty may report a 0 x 0 size (serial consoles, fresh ptys), with which tqdm
        # draws nothing; get_terminal_size falls back to 80 x 24.
        size = shutil.get_terminal_size()
        return tqdm(
            total=total,
            desc=name,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            leave=leave,
            file=sys.stderr,
            ncols=size.columns,
            nrows=size.lines,
        )

    def file_started(self, name: str, size: int | None) -> None:
        if self._enabled:
            self._bar = self._new(escape(name), size, leave=self._overall is None)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)
        if self._overall is not None:
            self._overall.update(nbytes)

    def file_done(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def write(self, line: str) -> None:
        """A line of text on stderr, above the bars if they are drawn."""
        if self._enabled:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            sys.stderr.write(line + "\n")

    def close(self) -> None:
        self.file_done()
        if self._overall is not None:
            self._overall.close()
            self._overall = None
