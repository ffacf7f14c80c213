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
    """Step, loss, tokens/s and ETA while training (steps, or seconds under --minutes)."""

    def __init__(self):
        self.progress = bar(TextColumn("{task.fields[info]}"))
        self.task = None
        self.budget = 0

    def start(self, total_steps, total_seconds, cfg):
        self.budget = total_seconds
        self.progress.start()
        total = total_seconds if total_seconds else total_steps
        self.task = self.progress.add_task("train", total=total, info="")

    def step(self, state, loss, nats_per_image, lr, tok_per_s):
        info = (f"step {state.step} loss {loss:.4f} ({nats_per_image:.1f} nats/img) lr {lr:.2e} "
                f"{tok_per_s:,.0f} tok/s")
        done = state.train_seconds if self.budget else state.step
        self.progress.update(self.task, completed=done, info=info)
        if not console.is_terminal:
            console.print(info)

    def eval(self, state, nll):
        self.progress.console.print(f"step {state.step}: test NLL {nll:.2f} nats/image "
                                    f"(best {state.best_nll:.2f})")

    def message(self, text):
        self.progress.console.print(text)

    def stop(self):
        self.progress.stop()


def table(title: str, columns: list[str], rows: list[list]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right" if c != columns[0] else "left")
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    Console().print(t)


def error(msg: str) -> None:
    console.print(f"[red]error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)

