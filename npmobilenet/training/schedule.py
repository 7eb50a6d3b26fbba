"""Learning-rate schedules: each is a small object with `lr_at(t)` and a `unit`.

`unit` says what `t` counts: "epoch" (0-based epoch index; the rate is constant within an epoch)
or "step" (0-based optimizer step across the whole run). The training loop sets
`optimizer.lr = schedule.lr_at(t)` before every step.
"""
import math


class Schedule:
    unit = "epoch"

    def lr_at(self, t):
        raise NotImplementedError

    def __call__(self, t):
        return self.lr_at(t)

    def _check(self, t):
        if t < 0:
            raise ValueError(f"{self.unit} must be >= 0, got {t}")


class ConstantLR(Schedule):
    """`lr` at every epoch."""

    def __init__(self, lr):
        self.lr = float(lr)

    def lr_at(self, epoch):
        self._check(epoch)
        return self.lr

    def __repr__(self):
        return f"ConstantLR(lr={self.lr:g})"


class StepLR(Schedule):
    """`lr * gamma ** (epoch // step_epochs)`: multiply by `gamma` every `step_epochs` epochs."""

    def __init__(self, lr, step_epochs, gamma=0.1):
        if step_epochs < 1:
            raise ValueError(f"step_epochs must be >= 1, got {step_epochs}")
        self.lr, self.step_epochs, self.gamma = float(lr), int(step_epochs), float(gamma)

    def lr_at(self, epoch):
        self._check(epoch)
        return self.lr * self.gamma ** (epoch // self.step_epochs)

    def __repr__(self):
        return f"StepLR(lr={self.lr:g}, step_epochs={self.step_epochs}, gamma={self.gamma:g})"


class ExponentialLR(Schedule):
    """`lr * gamma ** epoch`, e.g. the V2 paper's decay rate 0.98 per epoch (Sec. 6.1)."""

    def __init__(self, lr, gamma):
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.lr, self.gamma = float(lr), float(gamma)

    def lr_at(self, epoch):
        self._check(epoch)
        return self.lr * self.gamma**epoch

    def __repr__(self):
        return f"ExponentialLR(lr={self.lr:g}, gamma={self.gamma:g})"


class CosineLR(Schedule):
    """Linear warm-up then cosine decay, per optimizer step (Loshchilov & Hutter 2017; Goyal et al. 2017).

        step < warmup:  lr * (step + 1) / warmup
        otherwise:      min_lr + (lr - min_lr) * (1 + cos(pi * (step - warmup) / (total - warmup))) / 2

    so the first step already trains (never lr 0), the peak `lr` is reached at step `warmup`,
    and the last step (`total - 1`) is just above `min_lr`.
    """

    unit = "step"

    def __init__(self, lr, total_steps, warmup_steps=0, min_lr=0.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)

    @classmethod
    def from_epochs(cls, lr, epochs, steps_per_epoch, warmup_epochs=0.0, min_lr=0.0):
        """The schedule for `epochs` epochs of `steps_per_epoch` steps, warming up for `warmup_epochs`."""
        total = int(epochs) * int(steps_per_epoch)
        return cls(lr, total, int(round(warmup_epochs * steps_per_epoch)), min_lr)

    def lr_at(self, step):
        self._check(step)
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self):
        return (
            f"CosineLR(lr={self.lr:g}, total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
            f"min_lr={self.min_lr:g})"
        )
