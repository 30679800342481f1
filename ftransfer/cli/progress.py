"""Progress bars: the only importer of tqdm (and only when stderr is a terminal).

Bars show decimal units (kB, MB, as the summaries' MB/s): one bar per file, and for
several files an overall bar with the total size and an ETA. Text printed while
bars are drawn goes through ``write``, above the bars, never into them: each
uploaded file's outcome (its UDP summary, its error line, its --json record) is
handed to ``on_outcome`` as soon as it is known, which prints it that way.
"""

from __future__ import annotations

import sys

from ..client import Progress, TransferResult, escape
from ..errors import FtransferError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TextIO


class Bars(Progress):
    """tqdm bars on stderr (nothing at all when ``enabled`` is false)."""

    def __init__(
        self,
        files: int,
        total_bytes: int | None,
        *,
        enabled: bool,
        on_outcome: Callable[[TransferResult | FtransferError], None] | None = None,
    ) -> None:
        self._enabled = enabled
        self._on_outcome = on_outcome
        self._bar: Any = None
        self._overall: Any = None
        self._files, self._done = files, 0
        self.quiet = False
        """No notes (``unchanged``); warnings and errors are always written."""
        if enabled and files > 1:
            self._overall = self._new(self._label(), total_bytes, leave=True)

    def _label(self) -> str:
        return f"{self._done}/{self._files} files"

    def batch_started(self, files: int, total_bytes: int) -> None:
        """A tree is planned: the overall bar (files done, bytes, rate, ETA)."""
        self._files = files
        if self._enabled and files > 1:
            if self._overall is not None:
                self._overall.close()
            self._overall = self._new(self._label(), total_bytes, leave=True)

    def skipped(self, message: str) -> None:
        self.write(f"ftransfer: warning: {message}")

    def unchanged(self, files: int, skip: str) -> None:
        if not self.quiet:
            what = "size and mtime" if skip == "update" else "digest"
            self.write(f"ftransfer: {files:,} already there (same {what}), not sent")

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

    def resumed(self, offset: int) -> None:
        """The bar starts at ``offset`` (its rate counts only what moves now)."""
        if self._bar is not None:
            self._bar.initial = self._bar.n = self._bar.last_print_n = offset
            self._bar.refresh()
        if self._overall is not None:
            self._overall.total = max(0, (self._overall.total or 0) - offset)
            self._overall.refresh()
        if not self.quiet:
            self.write(f"ftransfer: resuming at {offset:,} bytes")

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)
        if self._overall is not None:
            self._overall.update(nbytes)

    def file_done(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def file_outcome(self, outcome: TransferResult | FtransferError) -> None:
        self._done += 1
        if self._overall is not None:
            self._overall.set_description(self._label(), refresh=False)
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def write(self, line: str, out: TextIO | None = None) -> None:
        """A line of text on ``out`` (default stderr), above the bars if they are
        drawn (tqdm clears them from the terminal, writes, and draws them again)."""
        out = sys.stderr if out is None else out
        if self._enabled:
            from tqdm import tqdm

            tqdm.write(line, file=out)
        else:
            out.write(line + "\n")

    def close(self) -> None:
        self.file_done()
        if self._overall is not None:
            self._overall.close()
            self._overall = None
