"""The progress line of a headless run: assets done, the running asset's own share, the time."""
from __future__ import annotations

import re
import sys
import time
from typing import TextIO

#: A progress line of an asset (see ``assets._progress``): "... 640/1800 (35%)".
_PERCENT = re.compile(r"\((\d{1,3})%\)")


class ProgressBar:
    """The progress of a run as one line of text: assets done out of those selected, the asset
    running now with its own share done (from its progress lines: embedded images, training
    steps and epochs) and the elapsed time.

    On a terminal the line is redrawn in place (and the console log is kept to warnings, which
    would break the line); elsewhere (a CI log, a file) a new line is written when an asset
    finishes or its own progress passes a quarter.
    """

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, width: int = 24):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self.console_level = "WARNING" if self.tty else "INFO"
        self.assets: list[str] = []
        self.done: list[str] = []
        self.current, self.fraction, self.detail = "", 0.0, ""
        self._start = time.monotonic()
        self._last_quarter: tuple[str, int] = ("", -1)

    def begin(self, assets: list[str]) -> None:
        self.assets, self.done = list(assets), []
        self.current, self.fraction, self.detail = "", 0.0, ""
        self._start = time.monotonic()

    def line(self) -> str:
        """The progress line as it stands."""
        total = max(1, len(self.assets))
        share = min(1.0, (len(self.done) + (self.fraction if self.current else 0.0)) / total)
        filled = int(round(share * self.width))
        elapsed = int(time.monotonic() - self._start)
        text = (f"[{'#' * filled}{'-' * (self.width - filled)}] {len(self.done)}/{len(self.assets)} "
                f"assets {elapsed // 60}m{elapsed % 60:02d}s")
        if self.current:
            text += f" | {self.current} {int(100 * self.fraction)}%"
            if self.detail:
                text += f" {self.detail[:60]}"
        return text

    def __call__(self, entry) -> None:
        """Take one event of the run (an ``EventLogEntry``) into account."""
        event = entry.dagster_event
        if event is not None:
            kind = event.event_type_value
            if kind == "STEP_START" and event.step_key in self.assets:
                self.current, self.fraction, self.detail = event.step_key, 0.0, ""
            elif kind == "ASSET_MATERIALIZATION" and event.asset_key is not None:
                name = event.asset_key.to_user_string()
                if name in self.assets and name not in self.done:
                    self.done.append(name)
                    if name == self.current:
                        self.current = ""
                    self._show(force=True)
            return
        match = _PERCENT.search(entry.user_message or "")
        if match and entry.step_key == self.current:
            self.fraction = min(100, int(match.group(1))) / 100
            self.detail = entry.user_message.strip().splitlines()[0]
            self._show(force=False)

    def _show(self, *, force: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            quarter = (self.current, int(4 * self.fraction))
            if not force and quarter == self._last_quarter:
                return
            self._last_quarter = quarter
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self, success: bool) -> None:
        """End the line (a terminal's cursor moves on) and say how the run ended."""
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
        self.stream.write(f"run {'finished' if success else 'failed'} after "
                          f"{time.monotonic() - self._start:.0f} s\n")
        self.stream.flush()
