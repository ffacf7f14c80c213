"""The rich layer: progress bars and tables for the CLI. Nothing else imports rich.

    from mnisttext.progress import TrainReporter
"""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

console = Console(stderr=True, emoji=False, highlight=False)


def bar(*extra, transient=False) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra, TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                    transient=transient)


class TrainReporter:
    """The training bar: steps, or under --minutes the time budget in seconds (the run stops by
    time, so a step total would be a guess); loss, LR, tokens/s beside it; a second bar while
    the final evaluation runs."""

    def __init__(self):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[done]}"), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, disable=not console.is_terminal)
        self.task = None
        self.budget = 0
        self.started = False

    def start(self, total_steps, budget_seconds, state):
        self.budget = budget_seconds
        self.progress.start()
        self.started = True
        total = budget_seconds or total_steps
        done = state.elapsed if budget_seconds else state.step
        self.task = self.progress.add_task("train", total=total, completed=done,
                                           done=self._done(done, total), info="")

    def _done(self, done, total) -> str:
        if self.budget:
            return f"{done / 60:.1f}/{total / 60:.1f} min"
        return f"{int(done)}/{int(total)} steps"

    def step(self, state, loss, nats_per_image, lr, tok_per_s):
        info = (f"step {state.step} loss {loss:.4f} ({nats_per_image:.1f} nats/img) lr {lr:.2e} "
                f"{tok_per_s:,.0f} tok/s")
        done = state.elapsed if self.budget else state.step
        total = self.progress.tasks[0].total
        self.progress.update(self.task, completed=min(done, total), done=self._done(done, total),
                             info=info)
        if not console.is_terminal:
            console.print(info)

    def eval(self, state, nll, images):
        self.message(f"step {state.step}: test NLL {nll:.2f} nats/image on {images} images "
                     f"(best {state.best_nll:.2f})")

    def evaluating(self, label, total):
        """A bar for an evaluation of `total` lines; returns its progress(done, total)."""
        if not self.started:
            return None
        task = self.progress.add_task(label, total=total, done=f"0/{total} images", info="")

        def update(done, total):
            self.progress.update(task, completed=done, total=total, done=f"{done}/{total} images")
        return update

    def message(self, text):
        self.progress.console.print(text, soft_wrap=True)

    def stop(self):
        if self.started:
            self.progress.stop()
            self.started = False


def table(title: str, columns: list[str], rows: list[list]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    Console().print(t)


def error(msg: str) -> None:
    console.print(f"[red]error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)

