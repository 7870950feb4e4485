"""BMTrain's process-level pieces for the ``bmtrain`` backend: import, start-up, collectives, optimizer step.

BMTrain (1.0.1) keeps its own NCCL communicator and never initializes ``torch.distributed``, so the
run's sums and gathers go through ``bmt.distributed`` here (:class:`BmtCollectives`), and
backward and stepping go through ``bmt.optim.OptimManager`` (:class:`BmtOptimization`).
Everything that touches ``bmtrain`` imports it lazily: this module imports on machines without it.
"""

from __future__ import annotations

import os
import pickle
import socket
from typing import Any

import torch

from fm9g.core.errors import Fm9gError

INSTALL_FIX = ("build and install it for this GPU with `fm9g install-bmtrain` (or `fm9g install-bmtrain "
               "--sdist bmtrain-1.0.1.tar.gz` offline; see docs/multinode.md), or use backend 'torch'")


def import_bmtrain() -> Any:
    """``import bmtrain``, or a clear :class:`Fm9gError` saying what is missing and how to fix it."""
    import importlib.util

    if importlib.util.find_spec("bmtrain") is None:
        raise Fm9gError("BMTrain is not installed (the bmtrain backend needs it, and a CUDA GPU)",
                        where="train config: backend 'bmtrain'", fix=INSTALL_FIX)
    if not torch.cuda.is_available():
        raise Fm9gError("the bmtrain backend needs a CUDA GPU, and torch sees none", where="train config: backend",
                        fix="run on a GPU machine, or use backend 'torch' (CPU works there)")
    try:
        import bmtrain
    except (ImportError, OSError) as error:  # e.g. its extension finds no usable NCCL/CUDA library
        raise Fm9gError(f"BMTrain is installed but does not import ({error})",
                        where="train config: backend 'bmtrain'", fix=INSTALL_FIX) from None
    return bmtrain


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def init_bmtrain(bmt: Any, seed: int) -> None:
    """``bmt.init_distributed(seed=...)`` once per process (reads torchrun's environment).

    Started without torchrun (one process), a free local port is chosen (also over an inherited
    ``MASTER_PORT``) so that two runs on one machine do not collide on BMTrain's default port 10010.
    Side effects of BMTrain's init: cuDNN off, CPU affinity split between the local ranks.
    """
    if bmt.config["initialized"]:
        return
    if "WORLD_SIZE" not in os.environ:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(_free_port())
    bmt.init_distributed(seed=seed)


class BmtCollectives:
    """:class:`~fm9g.backends.training.collectives.Collectives` over BMTrain's communicator (``bmt.distributed``)."""

    def __init__(self, bmt: Any):
        self.bmt = bmt
        self.rank, self.world_size = bmt.rank(), bmt.world_size()
        self.device = torch.device("cuda", torch.cuda.current_device())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        return self.bmt.distributed.all_reduce(tensor.cuda(), "sum")

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        if self.world_size == 1:
            return [list(values)]
        local = torch.tensor(values, dtype=torch.int64, device="cuda")
        return [row.tolist() for row in self.bmt.distributed.all_gather(local)]

    def gather_objects(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        payload = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).cuda()
        sizes = self.bmt.distributed.all_gather(torch.tensor([payload.numel()], dtype=torch.int64, device="cuda"))
        sizes = [int(s) for s in sizes.reshape(-1).tolist()]
        padded = torch.zeros(max(sizes), dtype=torch.uint8, device="cuda")
        padded[:payload.numel()] = payload
        rows = self.bmt.distributed.all_gather(padded).cpu()
        return [pickle.loads(rows[rank, :size].numpy().tobytes()) for rank, size in enumerate(sizes)]

    def barrier(self) -> None:
        if self.world_size > 1:
            self.bmt.synchronize()

    def close(self) -> None:
        """Nothing: BMTrain keeps its communicator for the life of the process."""


class BmtOptimization:
    """Backward, clipping and stepping through ``bmt.optim.OptimManager`` (loss scaling when enabled).

    ``OptimManager.backward`` multiplies the loss by ``loss_scale / world_size`` and BMTrain's
    reduce-scatter sums gradients, so the loop's ``local_sum · W / global_count`` gives the global
    token mean, as with FSDP. The learning rate is set on the param groups each step from fm9g's
    own (stateless) schedule; no BMTrain scheduler is attached.

    Clipping computes the global norm as ``OptimManager.clip_grad_norm`` does (every rank's squared
    norms summed), but with one multi-tensor norm instead of a float32 copy per gradient, and
    without loss scaling it applies the clip factor inside BMTrain's Adam kernel (which divides
    every gradient by the ``scale`` it is given) rather than in a pass over all gradients: on the
    7B shape that takes clipping from ≈ 65 ms to a few per step. With loss scaling on, the
    gradients are scaled in place, before ``OptimManager`` checks them for overflow.
    """

    def __init__(self, manager: Any, optimizer: torch.optim.Optimizer, collectives: BmtCollectives,
                 named: list[tuple[str, torch.nn.Parameter]]):
        self.manager, self.optimizer, self.collectives = manager, optimizer, collectives
        self.named = named
        """``(HF name, parameter)`` of the trainable parameters, the optimizer's order: how checkpoints key them."""
        self.clip_factor = 1.0

    @property
    def scale(self) -> float:
        return float(self.manager.loss_scale)

    def backward(self, loss: torch.Tensor) -> None:
        self.manager.backward(loss)

    def _gradients(self) -> list[torch.Tensor]:
        return [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]

    def clip(self, max_norm: float) -> float:
        """The global gradient norm (unscaled); the step clips to ``max_norm`` unless it is 0."""
        gradients = self._gradients()
        squares = torch.zeros((), dtype=torch.float32, device="cuda")
        if gradients:
            squares = torch.stack(torch._foreach_norm(gradients, 2, dtype=torch.float32)).square().sum()
        norm = float(self.collectives.all_reduce(squares.reshape(1)).sqrt()) / self.scale
        self.clip_factor = min(1.0, max_norm / (norm + 1e-6)) if max_norm > 0 else 1.0
        return norm

    @property
    def handles_overflow(self) -> bool:
        return bool(self.manager.loss_scale_enabled)

    def skip(self) -> None:
        self.clip_factor = 1.0
        self.manager.zero_grad()

    def step(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        manager, factor = self.manager, self.clip_factor
        if 0.0 < factor < 1.0 and not manager.loss_scale_enabled:
            manager.loss_scale = 1.0 / factor  # the Adam kernels divide the gradients by it
            try:
                manager.step()
            finally:
                manager.loss_scale = 1
        else:
            if factor < 1.0:
                torch._foreach_mul_(self._gradients(), factor)
            manager.step()  # skips the update (and lowers the scale) on overflow when scaling is on
        self.clip_factor = 1.0
        manager.zero_grad()


def make_optimizer(bmt: Any, parameters: list[torch.nn.Parameter], *, offload: bool, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """``AdamOffloadOptimizer`` (fp32 master + moments on the CPU) or ``AdamOptimizer`` (on the GPU).

    Both keep a float32 master copy for bf16 parameters and apply decoupled weight decay there
    (BMTrain's kernels); for float32 parameters BMTrain calls ``torch.optim._functional.adam``,
    whose weight decay is the L2 kind.
    """
    cls = bmt.optim.AdamOffloadOptimizer if offload else bmt.optim.AdamOptimizer
    return cls(parameters, lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)


def make_manager(bmt: Any, optimizer: torch.optim.Optimizer, options: dict[str, Any]) -> Any:
    """``OptimManager`` with the backend options' loss scaling (``loss_scale: null`` = none, bf16's usual)."""
    manager = bmt.optim.OptimManager(loss_scale=options["loss_scale"],
                                     loss_scale_factor=options["loss_scale_factor"],
                                     loss_scale_steps=options["loss_scale_steps"])
    manager.add_optimizer(optimizer)
    return manager


def manager_state(manager: Any) -> dict[str, Any]:
    """The loss-scaler state (what ``OptimManager.state_dict`` holds besides the optimizers)."""
    return {"loss_scale": float(manager.loss_scale), "loss_scale_enabled": bool(manager.loss_scale_enabled),
            "steps_since_last_scale": int(manager.steps_since_last_scale)}


def restore_manager(manager: Any, state: dict[str, Any] | None) -> None:
    if state and state.get("loss_scale_enabled") and manager.loss_scale_enabled:
        manager.loss_scale = state["loss_scale"]
        manager.steps_since_last_scale = state["steps_since_last_scale"]
