"""Progress display for slow phases: a spinner with elapsed time, and rollout-evaluation progress that shows
inside Lightning's Rich progress bar or as a tqdm bar. Imports no Lightning (the ``zprl`` command starts fast)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import RichProgressBar

EvalProgressFn = Callable[[int, int], None]
"""Called by :class:`zprl.evaluation.Evaluator` after every vector-env step: (episodes finished, env steps taken)."""


@contextmanager
def phase(description: str) -> Iterator[None]:
    """Show ``description`` with a spinner and elapsed time while the block runs, then one line with its duration.

    On a terminal the spinner animates (stderr); in a log file there is a start line and an end line.
    """
    console = Console(stderr=True)
    start = time.monotonic()
    if console.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            progress.add_task(description, total=None)
            yield
    else:
        print(f"{description} ...", file=sys.stderr, flush=True)
        yield
    print(f"{description}: done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


@contextmanager
def tqdm_eval_progress(total_episodes: int, description: str = "eval episodes",
                       min_interval_s: float = 0.5) -> Iterator[EvalProgressFn]:
    """An :data:`EvalProgressFn` drawing a tqdm bar over episodes, with the env steps taken as a postfix."""
    with tqdm(total=total_episodes, desc=description, unit="ep") as bar:
        last = [0.0]

        def report(episodes: int, env_steps: int) -> None:
            now = time.monotonic()
            if episodes == total_episodes or now - last[0] >= min_interval_s:
                last[0] = now
                bar.n = episodes
                bar.set_postfix_str(f"env steps {env_steps}")  # refreshes the bar

        yield report


@contextmanager
def rich_eval_progress(bar: RichProgressBar, total_episodes: int, description: str = "rollout eval",
                       min_interval_s: float = 0.5) -> Iterator[EvalProgressFn]:
    """An :data:`EvalProgressFn` adding a task to a running Lightning ``RichProgressBar`` (removed afterwards).

    Lightning refreshes its Rich display only on batch ends, so the task refreshes it itself.
    """
    progress = bar.progress
    task = progress.add_task(description, total=total_episodes)
    last = [0.0]

    def report(episodes: int, env_steps: int) -> None:
        now = time.monotonic()
        if episodes == total_episodes or now - last[0] >= min_interval_s:
            last[0] = now
            progress.update(task, completed=episodes, description=f"{description} (env steps {env_steps})")
            bar.refresh()

    try:
        yield report
    finally:
        progress.remove_task(task)
        bar.refresh()
