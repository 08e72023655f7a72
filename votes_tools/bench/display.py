"""The benchmark's progress display: one line per phase, on standard error."""

from __future__ import annotations

from rich.progress import TaskID

from votes_app.console import progress_bar


class Display:
    def __init__(self) -> None:
        self.progress = progress_bar()
        self._lines: dict[str, TaskID] = {}

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def show(self, line: str, completed: float, total: float | None = None) -> None:
        if line not in self._lines:
            self._lines[line] = self.progress.add_task(line, total=total)
        self.progress.update(self._lines[line], completed=completed, total=total)

    def note(self, text: str) -> None:
        self.progress.console.print(text, highlight=False)
