"""Adam as ``torch.optim.Adam(fused=True)`` computes it, without ``torch.optim``'s per-call machinery.

The update is torch's own fused kernel (``torch._fused_adam_``, the one ``torch.optim.Adam(fused=True)``
calls), applied to the same state (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter) with the
same ``state_dict`` layout, so the weights after any number of steps are bit for bit those of
``torch.optim.Adam(fused=True)`` and checkpoints written by either load into the other.

Why not ``torch.optim.Adam`` itself: its first call imports ``torch._dynamo`` (1.1 s on the
2-core machine the documentation's figures come from, a tenth of a 3-epoch ``vaescope train``) and each
``step`` spends ~0.1 ms of Python on grouping and hooks around the ~0.14 ms kernel of dense16.
:func:`vaescope.training.engine.make_optimizer` falls back to ``torch.optim.Adam`` where the kernel is
missing or the parameters are not all float tensors on one CPU or CUDA device.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False, "maximize": False,
    "foreach": None, "capturable": False, "differentiable": False, "fused": True, "decoupled_weight_decay": False,
}


def fused_kernel_supports(params: list[torch.Tensor]) -> bool:
    """True when ``torch._fused_adam_`` exists here and takes ``params``: float tensors on one
    CPU or CUDA device."""
    if not hasattr(torch, "_fused_adam_") or not params:
        return False
    device = params[0].device
    return device.type in ("cpu", "cuda") and all(
        p.device == device and p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) for p in params)


class FusedAdam:
    """Adam over ``params`` with learning rate ``lr`` (one parameter group, no weight decay).

    The interface the engine, checkpoints and the stacked trainer use of ``torch.optim.Adam``:
    ``step``, ``zero_grad``, ``state`` (parameter -> its state), ``param_groups``, ``defaults``,
    ``state_dict`` and ``load_state_dict``. Setting ``found_inf`` (a 0-dim float tensor on the
    parameters' device) makes the kernel skip every step while it is nonzero, as ``GradScaler``
    does with ``torch.optim.Adam``.
    """

    found_inf: torch.Tensor | None = None  # a class default: NonFiniteGuard sets and deletes the attribute

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3, per_model: bool = False) -> None:
        self.params = list(params)
        self.per_model = per_model
        self._views: dict[int, tuple[Any, ...]] = {}  # per_model: id(p) -> its moments and the views of all three
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.defaults = {**DEFAULTS, "lr": lr}
        self.param_groups = [{**self.defaults, "params": self.params}]
        self.state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient (as ``torch.optim.Adam``)."""
        group = self.param_groups[0]
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in self.params:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:  # the layout torch.optim.Adam(fused=True) creates
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if self.per_model:  # one tensor per model: views of the stack, its gradient and moments
                views = self._model_views(p, state)
                params += views[0]
                grads += p.grad.unbind()
                exp_avgs += views[1]
                exp_avg_sqs += views[2]
                steps += [state["step"]] * len(p)
            else:
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        distinct = list({id(s): s for s in steps}.values())  # a stack's models share its step
        torch._foreach_add_(distinct, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=float(group["lr"]),
                           beta1=float(beta1), beta2=float(beta2), weight_decay=float(group["weight_decay"]),
                           eps=float(group["eps"]), maximize=False, grad_scale=None, found_inf=self.found_inf)
        if self.found_inf is not None:  # a skipped step does not count (torch.optim.Adam does the same)
            torch._foreach_sub_(distinct, [self.found_inf] * len(distinct))

    def _model_views(self, p: torch.Tensor, state: dict[str, Any]) -> tuple[tuple[torch.Tensor, ...], ...]:
        """The per-model views of ``p`` and its moments, made again when the moments were replaced."""
        cached = self._views.get(id(p))
        if cached is None or cached[0] is not state["exp_avg"] or cached[1] is not state["exp_avg_sq"]:
            cached = (state["exp_avg"], state["exp_avg_sq"],
                      (p.unbind(), state["exp_avg"].unbind(), state["exp_avg_sq"].unbind()))
            self._views[id(p)] = cached
        return cached[2]

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam``'s layout: state by parameter index, and the group's hyper-parameters."""
        index = {id(p): i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items() if s and id(p) in index},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take a state saved by this class or by ``torch.optim.Adam`` for the same parameters."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        saved = groups[0]
        for key in ("amsgrad", "maximize", "weight_decay", "decoupled_weight_decay"):
            if saved.get(key, DEFAULTS[key]) != DEFAULTS[key]:
                raise ValueError(f"loaded state dict has {key}={saved[key]!r}, which this Adam does not implement")
        self.param_groups[0].update({k: v for k, v in saved.items() if k != "params"})
        self.param_groups[0]["betas"] = tuple(self.param_groups[0]["betas"])
        self.state = defaultdict(dict)
        for position, saved_id in enumerate(saved["params"]):
            entry = state_dict["state"].get(saved_id)
            if not entry:
                continue
            p = self.params[position]
            # copies (never shared with the state they came from); the moments in the parameter's
            # own layout (a channels-last weight gets channels-last moments), as the kernel expects
            self.state[p] = {
                key: (torch.as_tensor(value).to(dtype=torch.float32, device=p.device, copy=True) if key == "step"
                      else torch.empty_like(p, memory_format=torch.preserve_format).copy_(value))
                for key, value in entry.items()}


Optimizer = torch.optim.Optimizer | FusedAdam  # what make_optimizer returns
