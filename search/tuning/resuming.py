"""Where a trial's training state is kept between epochs, and when it is written.

A trial's state lives in `results/<study>/resume/trial-<N>.pt`, N being the number of the trial's
first attempt: a retry of it (same params, same seed; Optuna's RetryFailedTrialCallback copies the
user attrs that hold both) finds the file and carries on from the epoch it holds. The fit hands
over its state after every epoch; it is written once `every` seconds have passed since the last
write (0: after every epoch), and on an interrupt; it is deleted when the trial ends.
"""

from __future__ import annotations

import time
from pathlib import Path

from search.training.resume import TrainState, load_state, save_state

RESUME_DIR = "resume"  # under results/<study>/


def state_path(resume_dir: Path, first_attempt: int) -> Path:
    return resume_dir / f"trial-{first_attempt}.pt"


class StateKeeper:
    """Takes a fit's per-epoch states; writes them as often as `every` seconds allow."""

    def __init__(self, path: Path, every: float):
        self.path, self.every = path, every
        self.latest: TrainState | None = None
        self.written_epoch = 0
        self.written_at = time.monotonic()

    def load(self, config: dict) -> TrainState | None:
        """The state a previous attempt left, if it belongs to this config."""
        state = load_state(self.path)
        if state is None or state.config != config:
            return None
        self.written_epoch = state.epoch
        return state

    def offer(self, state: TrainState) -> None:
        self.latest = state
        if self.every == 0 or time.monotonic() - self.written_at >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write the newest state not yet on disk (on an interrupt, say)."""
        if self.latest is not None and self.latest.epoch > self.written_epoch:
            save_state(self.path, self.latest)
            self.written_epoch, self.written_at = self.latest.epoch, time.monotonic()

    def discard(self) -> None:
        """The trial ended: its state has nothing left to resume."""
        self.path.unlink(missing_ok=True)
        self.latest = None
