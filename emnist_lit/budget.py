"""A training-time budget that the LR schedule honours: a one-cycle LR driven by elapsed time, not by a step count
fixed in advance, so a run on a slow or busy machine still ends annealed, and its final weights are validated."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import Callback, Timer

from emnist_lit.errors import EMNISTConfigError


def cosine_between(start: float, end: float, fraction: float) -> float:
    """`start` at fraction 0, `end` at 1, along half a cosine (OneCycleLR's `cos` annealing)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))


def one_cycle(progress: float, warmup_fraction: float, start: float, peak: float, end: float) -> float:
    """OneCycleLR's shape over `progress` in [0, 1] instead of steps: `start` up to `peak` during the warm-up, then
    down to `end`."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return cosine_between(start, peak, progress / warmup_fraction)
    return cosine_between(peak, end, (progress - warmup_fraction) / (1 - warmup_fraction))


class TimeBudget(Callback):
    """Train for `minutes` of training time (validation excluded) with a one-cycle LR that follows the share of the
    budget spent, or of `max_epochs`/`max_steps` when those end the run first, whichever is further: the last step
    runs at the schedule's final LR however fast the machine is that day. Then the run stops, which makes Lightning
    validate (and checkpoint) the final weights, also in the middle of an epoch.

    The peak LR is the optimizer's configured `lr` (each param group's own); the shape and its arguments are
    OneCycleLR's (cosine warm-up from peak/div_factor, cosine anneal to peak/div_factor/final_div_factor, momentum
    or Adam's beta1 cycled the other way). It replaces `model.scheduler`; a step-counted schedule is what a config
    without a budget gets, and the one to use where runs must repeat exactly, since how far a run gets in given
    minutes depends on the machine."""

    clock: Callable[[], float] = staticmethod(time.monotonic)
    """Seconds from some fixed point; tests replace it with a fake clock."""

    def __init__(
        self,
        minutes: float | None = None,
        warmup_fraction: float = 0.2,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
    ) -> None:
        """
        Args:
            minutes: training time to spend, validation excluded; null: no budget (the model's own scheduler,
                if any, runs as configured).
            warmup_fraction: share of the budget spent raising the LR to its peak (OneCycleLR's `pct_start`).
            div_factor: the LR starts at peak / div_factor.
            final_div_factor: the LR ends at peak / div_factor / final_div_factor.
            cycle_momentum: move SGD momentum (when not 0) or Adam beta1 from max_momentum down to base_momentum while
                the LR rises, and back while it falls.
            base_momentum: momentum at the LR's peak.
            max_momentum: momentum at the start and end.
        """
        if minutes is not None and minutes <= 0:
            raise EMNISTConfigError(f"time_budget.minutes must be positive, got {minutes}")
        if not 0 < warmup_fraction < 1:
            raise EMNISTConfigError(f"time_budget.warmup_fraction must be between 0 and 1, got {warmup_fraction}")
        self.minutes = minutes
        self.warmup_fraction = warmup_fraction
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.cycle_momentum = cycle_momentum
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum
        self._offset = 0.0  # training seconds spent before a resume
        self._started: float | None = None
        self._paused = 0.0
        self._pause_start: float | None = None
        self._last_end: float | None = None
        self._step_seconds: float | None = None
        self._last_batch = False
        self._total_steps = math.inf

    @property
    def seconds(self) -> float:
        return 60.0 * (self.minutes or 0.0)

    def elapsed(self) -> float:
        """Training seconds spent so far, validation pauses excluded, resumed runs included."""
        if self._started is None:
            return self._offset
        now = self._pause_start if self._pause_start is not None else self.clock()
        return self._offset + now - self._started - self._paused

    def progress(self, trainer: L.Trainer, elapsed: float) -> float:
        """How far along the schedule the next step is: the budget's share, or the step count's if further."""
        by_time = elapsed / self.seconds
        by_steps = trainer.global_step / max(self._total_steps - 1, 1)
        return min(max(by_time, by_steps), 1.0)

    def set_schedule(self, trainer: L.Trainer, progress: float) -> None:
        """Each param group's LR (and momentum) at `progress` along the one-cycle shape."""
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                peak = group.setdefault("peak_lr", group["lr"])  # kept in the optimizer state, so resumes find it
                start = peak / self.div_factor
                group["lr"] = one_cycle(progress, self.warmup_fraction, start, peak, start / self.final_div_factor)
                if self.cycle_momentum:
                    momentum = one_cycle(
                        progress, self.warmup_fraction, self.max_momentum, self.base_momentum, self.max_momentum
                    )
                    if "betas" in group:
                        group["betas"] = (momentum, *group["betas"][1:])
                    elif group.get("momentum"):  # plain SGD (momentum 0) stays plain
                        group["momentum"] = momentum

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None:
            return
        if trainer.lr_scheduler_configs:
            raise EMNISTConfigError(
                "time_budget.minutes is set, and it drives the LR itself: remove model.scheduler "
                f"({type(trainer.lr_scheduler_configs[0].scheduler).__name__}) from the config, or set "
                "time_budget.minutes to null for the step-counted schedule"
            )
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        guard = timer.time_remaining() if timer is not None else None
        if guard is not None and guard <= self.seconds:
            raise EMNISTConfigError(
                f"trainer.max_time ({guard / 60:.1f} min) must exceed time_budget.minutes "
                f"({self.minutes} min): it is the hard guard and would stop the run before the LR has annealed"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.minutes is None:
            return
        self._started = self.clock()
        self._paused, self._pause_start, self._last_end, self._step_seconds = 0.0, None, None, None
        self._last_batch = False
        total_steps = trainer.estimated_stepping_batches
        self._total_steps = total_steps if total_steps > 0 else math.inf  # an iterable dataset without max_steps
        self.set_schedule(trainer, self.progress(trainer, self.elapsed()))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._started is not None and not trainer.sanity_checking:
            self._pause_start = self.clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pause_start is not None:
            self._paused += self.clock() - self._pause_start
            self._pause_start = None
            self._last_end = None  # the next step's time would include the validation

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        """Stop after the step that the schedule ended on; otherwise set the next step's LR, and make it the final
        one when the next step is the last that fits in the budget."""
        if self.minutes is None:
            return
        elapsed = trainer.strategy.broadcast(self.elapsed())  # every process takes the same decisions
        if self._last_end is not None:
            seconds = elapsed - self._last_end
            self._step_seconds = seconds if self._step_seconds is None else 0.9 * self._step_seconds + 0.1 * seconds
        self._last_end = elapsed
        if self._last_batch or elapsed >= self.seconds:
            trainer.should_stop = True
            self._report(trainer, elapsed, batch_idx)
            return
        progress = self.progress(trainer, elapsed)
        if self._step_seconds is not None and elapsed + 1.5 * self._step_seconds >= self.seconds:
            progress = 1.0  # the next step ends nearer the budget than the one after it would
        self._last_batch = progress >= 1.0
        self.set_schedule(trainer, progress)

    def _report(self, trainer: L.Trainer, elapsed: float, batch_idx: int) -> None:
        if trainer.is_global_zero:
            print(
                f"time budget: the LR schedule ended after {elapsed / 60:.2f} min of training, at step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx + 1} of "
                f"{trainer.num_training_batches}), {trainer.global_step / max(elapsed, 1e-9):.2f} steps/s; "
                "validating the final weights",
                file=sys.stderr,
            )

    def state_dict(self) -> dict[str, float]:
        """The training time spent, so a resumed run continues the schedule where it was."""
        return {"elapsed": self.elapsed()} if self.minutes is not None else {}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self._offset = state_dict.get("elapsed", 0.0)
