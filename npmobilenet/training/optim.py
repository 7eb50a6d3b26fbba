"""Optimizers: SGD (momentum, Nesterov), RMSprop as TensorFlow computes it, AdamW.

Every optimizer takes the model's parameters (`model.named_parameters()`, a list of
`(name, Parameter)`, or a list of `Parameter`), reads each `p.grad` and updates `p.data` *in
place*. `lr` is a plain attribute a schedule sets before each step. Weight decay is applied to
every parameter whose `Parameter.decay` is True; batch-norm scale/shift and biases have
`decay=False` and are exempt unless `decay_bn_and_bias=True` (the MobileNet recipes do not decay
them; V2 paper, Sec. 6.1 uses weight decay 4e-5 on the weights).

`state_dict()` is a flat dict of plain NumPy arrays and Python scalars (so a checkpoint stores it
in an `.npz` without pickling): `"kind"`, `"steps"`, `"lr"`, and one `"<slot>/<parameter name>"`
array per state slot and parameter. `load_state_dict` checks the kind, keys and shapes and raises
one ValueError naming what does not match.
"""
import numpy as np


def _named(params):
    """`params` as a list of `(name, Parameter)`; unnamed parameters are numbered."""
    if hasattr(params, "named_parameters"):
        params = params.named_parameters()
    named = []
    for i, item in enumerate(params):
        if isinstance(item, tuple) and len(item) == 2:
            name, p = item
        else:
            name, p = str(i), item
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"parameter {name!r} must have .data and .grad arrays, got {type(p).__name__}")
        named.append((str(name), p))
    if not named:
        raise ValueError("the optimizer got no parameters")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError("parameter names must be unique")
    return named


class Optimizer:
    """Shared bookkeeping: parameters, state slots, weight-decay exemption, state dicts."""

    # (slot name, initial value) for the per-parameter state each optimizer keeps
    slots = ()

    def __init__(self, params, lr, weight_decay=0.0, decay_bn_and_bias=False):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.params = _named(params)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decay_bn_and_bias = bool(decay_bn_and_bias)
        self.steps = 0
        self.state = {
            slot: {name: np.full_like(p.data, init) for name, p in self.params} for slot, init in self.slots
        }

    def decay_of(self, p):
        """The weight-decay coefficient for parameter `p` (0 for exempt BN/bias parameters)."""
        return self.weight_decay if (p.decay or self.decay_bn_and_bias) else 0.0

    def zero_grad(self):
        for _, p in self.params:
            p.grad[...] = 0

    def step(self):
        """One update of every parameter from its current `.grad`."""
        self.steps += 1
        for name, p in self.params:
            self._update(name, p, self.decay_of(p))

    def _update(self, name, p, weight_decay):
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self):
        state = {"kind": type(self).__name__, "steps": self.steps, "lr": self.lr}
        for slot, arrays in self.state.items():
            for name, a in arrays.items():
                state[f"{slot}/{name}"] = a.copy()
        return state

    def load_state_dict(self, state):
        kind = str(state.get("kind", ""))
        if kind != type(self).__name__:
            raise ValueError(f"optimizer state is for {kind or 'an unknown optimizer'}, not {type(self).__name__}")
        expected = {f"{slot}/{name}": a for slot, arrays in self.state.items() for name, a in arrays.items()}
        given = {k for k in state if "/" in k}
        missing = sorted(set(expected) - given)
        unexpected = sorted(given - set(expected))
        mismatched = [
            f"{k}: expects {a.shape}, got {np.shape(state[k])}"
            for k, a in expected.items()
            if k in state and np.shape(state[k]) != a.shape
        ]
        if missing or unexpected or mismatched:
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
            if unexpected:
                parts.append("unexpected: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
            if mismatched:
                parts.append("shape mismatches: " + "; ".join(mismatched[:10]))
            raise ValueError(f"{kind} state does not match the parameters: " + " | ".join(parts))
        for k, a in expected.items():
            a[...] = state[k]
        self.steps = int(state["steps"])
        self.lr = float(state["lr"])
        return self

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.lr:g}, weight_decay={self.weight_decay:g}, params={len(self.params)})"


class SGD(Optimizer):
    """Stochastic gradient descent with (Nesterov) momentum and L2 weight decay.

        g = dL/dw + wd * w
        v = momentum * v + g
        w = w - lr * v                        (heavy ball)
        w = w - lr * (g + momentum * v)       (Nesterov, as Sutskever et al. 2013 rewrite it)

    This is PyTorch's `torch.optim.SGD` (dampening 0).
    """

    slots = (("momentum", 0.0),)

    def __init__(self, params, lr, momentum=0.9, nesterov=False, weight_decay=0.0, decay_bn_and_bias=False):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        super().__init__(params, lr, weight_decay, decay_bn_and_bias)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, p, weight_decay):
        g = p.grad + weight_decay * p.data if weight_decay else p.grad
        if self.momentum == 0.0:
            p.data -= self.lr * g
            return
        v = self.state["momentum"][name]
        v *= self.momentum
        v += g
        p.data -= self.lr * (g + self.momentum * v if self.nesterov else v)


class RMSprop(Optimizer):
    """RMSprop as TensorFlow 1's `tf.train.RMSPropOptimizer`, which the MobileNet papers trained with.

        g  = dL/dw + wd * w
        ms = decay * ms + (1 - decay) * g**2
        m  = momentum * m + lr * g / sqrt(ms + eps)     <- eps INSIDE the square root (TensorFlow)
        w  = w - m

    Three differences from PyTorch's `torch.optim.RMSprop`: eps is added inside the square root
    (PyTorch: `sqrt(ms) + eps`); the learning rate is applied inside the momentum buffer (so a
    schedule's change of lr does not rescale momentum already accumulated); and the mean square
    starts at ones (`initial_mean_square=1.0`, TF 1's slot initialiser), not zeros, so the first
    steps are not huge. Defaults are the papers' decay 0.9 and momentum 0.9 (V1 Sec. 4, V2 Sec.
    6.1, V3 Sec. 6.1). TF's own default eps is 1e-10 and TF-slim's training script used 1.0; 1e-3
    is the value timm's `rmsproptf` uses to reproduce the papers.
    """

    def __init__(
        self,
        params,
        lr,
        decay=0.9,
        momentum=0.9,
        eps=1e-3,
        weight_decay=0.0,
        decay_bn_and_bias=False,
        initial_mean_square=1.0,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.slots = (("mean_square", float(initial_mean_square)), ("momentum", 0.0))
        super().__init__(params, lr, weight_decay, decay_bn_and_bias)
        self.decay = float(decay)
        self.momentum = float(momentum)
        self.eps = float(eps)

    def _update(self, name, p, weight_decay):
        g = p.grad + weight_decay * p.data if weight_decay else p.grad
        ms = self.state["mean_square"][name]
        m = self.state["momentum"][name]
        ms *= self.decay
        ms += (1.0 - self.decay) * g * g
        m *= self.momentum
        m += self.lr * g / np.sqrt(ms + self.eps)
        p.data -= m


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2).

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t),  v_hat = v / (1 - beta2**t)
        w = w - lr * (m_hat / (sqrt(v_hat) + eps) + wd * w)

    The decay term uses `w` before the step and is not part of `g` (that is what "decoupled"
    means); this matches PyTorch's `torch.optim.AdamW`.
    """

    slots = (("exp_avg", 0.0), ("exp_avg_sq", 0.0))

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay_bn_and_bias=False):
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, lr, weight_decay, decay_bn_and_bias)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = float(eps)

    def _update(self, name, p, weight_decay):
        g = p.grad
        m = self.state["exp_avg"][name]
        v = self.state["exp_avg_sq"][name]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * g * g
        m_hat = m / (1.0 - self.beta1**self.steps)
        v_hat = v / (1.0 - self.beta2**self.steps)
        update = m_hat / (np.sqrt(v_hat) + self.eps)
        if weight_decay:
            update += weight_decay * p.data
        p.data -= self.lr * update


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adamw": AdamW}


def make_optimizer(name, params, lr, weight_decay=0.0, **kwargs):
    """An optimizer by its command-line name: "sgd" (Nesterov momentum 0.9), "rmsprop", "adamw"."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    if name == "sgd":
        kwargs = {"momentum": 0.9, "nesterov": True, **kwargs}
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay, **kwargs)
