"""The plain PyTorch loop: the reference that Lightning's and Keras's speed is measured against.

It trains what the Lightning engines train, with the same pieces and none of Lightning's
machinery: the ``nn.Linear`` network of :func:`xorbench.adapters.lightning.build_network`, the
optimizer of :func:`xorbench.adapters.lightning.torch_optimizer`, the seed-batched forward pass
and metrics of :mod:`xorbench.adapters.lightning_batched`. Each step does the same work as the
Lightning module's ``training_step``: forward, binary cross-entropy from the logits, the batch's
loss and correct count added to the epoch's sums, backward and the optimizer's step; each epoch
ends with validation. Batches follow ``orders`` exactly (base.py): batch ``j`` of epoch ``e`` is
``orders[e, j*B:(j+1)*B]``.

:class:`TorchLoop` trains one run, :class:`TorchSeedLoop` all seeds of a cell as one model with
a leading seed axis, padded to :data:`xorbench.adapters.lightning_batched.SEED_ROWS` rows as the
Lightning batched engine pads them, so both do the same arithmetic. Both train epoch by epoch
through :meth:`train`, so a benchmark can build a run and train its warm-up epochs outside the
timed call. This is a timing reference, not a grid engine: the seed-batched loop does not freeze
a diverged seed (the other seeds are unaffected either way; its rows say so through ``diverged``)
and validates the iterates, never ASGD's average, which no benchmark-length run reaches (t0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from xorbench.adapters.base import HISTORY_METRICS, TrainOutput
from xorbench.adapters.lightning import build_network, torch_optimizer
from xorbench.adapters.lightning_batched import (
    SEED_ROWS,
    SeedOrderSampler,
    seed_logits,
    seed_metrics,
)
from xorbench.data import Dataset, batch_bounds
from xorbench.grid import Cell
from xorbench.model import Weights, from_torch_layout, to_torch_layout
from xorbench.optimizers import asgd_averaging_active, torch_kwargs

logger = logging.getLogger(__name__)

FRAMEWORK = "torch"


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check_inputs(cell: Cell, data: Dataset, orders: np.ndarray, leading: tuple[int, ...]) -> None:
    """Raise ValueError for a cell or an order array this loop cannot train."""
    if cell.framework != FRAMEWORK:
        raise ValueError(f"framework must be {FRAMEWORK!r} here; received {cell.framework!r}")
    expected = (*leading, cell.epochs, data.n_train)
    if orders.shape != expected:
        names = "(seeds, epochs, n_train)" if leading else "(epochs, n_train)"
        raise ValueError(f"orders must have shape {names} = {expected}; received {orders.shape}")
    if not np.issubdtype(orders.dtype, np.integer):
        raise ValueError(f"orders must hold integer indices; received dtype {orders.dtype}")


class TorchLoop:
    """One run of ``cell`` in plain PyTorch, built and ready to train epoch by epoch.

    Parameters
    ----------
    cell
        The grid point; ``cell.framework`` must be ``"torch"``.
    data
        Training and validation sets.
    initial
        Starting weights in Keras layout (kernel [in, out]).
    orders
        int array of shape (epochs, n_train): the training indices of each epoch, in order.

    Attributes
    ----------
    rows
        One (train_loss, train_acc, val_loss, val_acc) tuple per trained epoch.
    steps
        Optimizer updates made so far.
    diverged
        Whether a training loss was not finite; :meth:`train` stops after that epoch.
    """

    def __init__(self, cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray) -> None:
        orders = np.asarray(orders)
        _check_inputs(cell, data, orders, ())
        # One thread is fastest for a network this small, as in the adapters.
        torch.set_num_threads(1)

        self.cell = cell
        self.net = build_network(cell.hidden)
        with torch.no_grad():
            params = [t for pair in to_torch_layout(initial) for t in pair]
            for param, value in zip(self.net.parameters(), params, strict=True):
                param.copy_(_tensor(value))
        self.optimizer = torch_optimizer(self.net.parameters(), cell.optimizer_spec)
        self.x, self.y = _tensor(data.x_train), _tensor(data.y_train)
        self.x_val, self.y_val = _tensor(data.x_val), _tensor(data.y_val)
        self.orders = torch.from_numpy(orders.astype(np.int64))
        self.bounds = batch_bounds(data.n_train, cell.batch_size)
        self.rows: list[tuple[float, float, float, float]] = []
        self.steps = 0
        self.diverged = False

    @property
    def steps_per_epoch(self) -> int:
        """Updates in one epoch."""
        return len(self.bounds)

    def train(self, epochs: int) -> None:
        """Train the next ``epochs`` epochs, each followed by validation."""
        for _ in range(epochs):
            if self.diverged or len(self.rows) >= self.cell.epochs:
                return
            self._epoch(self.orders[len(self.rows)])

    def _epoch(self, order: Tensor) -> None:
        net, optimizer = self.net, self.optimizer
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for start, stop in self.bounds:
            index = order[start:stop]
            x, y = self.x[index], self.y[index]
            logits = net(x).squeeze(-1)
            loss = functional.binary_cross_entropy_with_logits(logits, y)

            # The epoch's loss is weighted by batch size, as the adapters compute it (F5).
            loss_sum += float(loss.detach()) * len(y)
            correct += int(((logits.detach() > 0) == (y > 0.5)).sum())
            seen += len(y)

            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.steps += 1

        val_loss, val_acc = self._validate()
        train_loss = loss_sum / seen
        self.rows.append((train_loss, correct / seen, val_loss, val_acc))
        if not math.isfinite(train_loss):
            self.diverged = True

    def _averaged(self) -> list[Tensor] | None:
        """ASGD's average ``ax`` of every parameter once averaging is active, else None."""
        if not self.averaging_active():
            return None
        return [self.optimizer.state[p]["ax"] for p in self.net.parameters()]

    @torch.no_grad()
    def _validate(self) -> tuple[float, float]:
        """Loss and accuracy on the validation set, with ASGD's average when it is active."""
        self.net.eval()
        averaged = self._averaged()
        saved = [p.clone() for p in self.net.parameters()] if averaged else []
        for param, value in zip(self.net.parameters(), averaged or [], strict=False):
            param.copy_(value)
        logits = self.net(self.x_val).squeeze(-1)
        loss = float(functional.binary_cross_entropy_with_logits(logits, self.y_val))
        acc = int(((logits > 0) == (self.y_val > 0.5)).sum()) / len(self.y_val)
        for param, value in zip(self.net.parameters(), saved, strict=False):
            param.copy_(value)
        return loss, acc

    def averaging_active(self) -> bool | None:
        """For ASGD, whether the average has left the iterates so far; None otherwise."""
        if self.cell.optimizer != "asgd":
            return None
        t0 = float(torch_kwargs(self.cell.optimizer_spec)["t0"])
        return asgd_averaging_active(self.steps, t0)

    def output(self) -> TrainOutput:
        """The run so far, as the adapters return it."""
        tensors = self._averaged() or list(self.net.parameters())
        pairs = [
            (w.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32))
            for w, b in zip(tensors[0::2], tensors[1::2], strict=True)
        ]
        return TrainOutput(
            history=np.array(self.rows, dtype=np.float64).reshape(-1, len(HISTORY_METRICS)),
            final_weights=from_torch_layout(pairs),
            diverged=self.diverged,
            asgd_averaging=self.averaging_active(),
            steps=self.steps,
        )


def fit(cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray) -> TrainOutput:
    """Train one run of ``cell`` in the plain loop, per :mod:`xorbench.adapters.base`.

    Validation runs after every epoch. Returns the history of shape (epochs_trained, 4), the
    final float32 weights in Keras layout, whether the run diverged and the number of updates.
    """
    loop = TorchLoop(cell, data, initial, orders)
    loop.train(cell.epochs)
    return loop.output()


class TorchSeedLoop:
    """All seeds of ``cell`` as one plain-PyTorch model with a leading seed axis.

    Parameters
    ----------
    cell
        The grid point; ``cell.framework`` must be ``"torch"``.
    data
        Training and validation sets, shared by every seed.
    initials
        Seed ``s``'s starting weights in Keras layout, one entry per seed.
    orders
        int array of shape (seeds, epochs, n_train): each seed's training indices per epoch.

    Attributes
    ----------
    rows
        One float64 array of shape (seeds, 4) per trained epoch, the padding rows left out.
    steps
        Optimizer updates made so far, shared by every seed.
    """

    def __init__(
        self, cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray
    ) -> None:
        orders = np.asarray(orders)
        _check_inputs(cell, data, orders, (len(initials),))
        torch.set_num_threads(1)

        # Padding rows copy seed 0, as in the Lightning batched engine (see its docstring).
        self.cell = cell
        self.seeds = len(initials)
        filler = -self.seeds % SEED_ROWS
        rows = [*initials, *[initials[0]] * filler]
        orders = np.concatenate([orders, np.repeat(orders[:1], filler, axis=0)])

        # Kernels (seeds, in, out) and biases (seeds, 1, out), the layout of seed_logits.
        self.params: list[nn.Parameter] = []
        for layer in range(len(initials[0])):
            kernels = np.stack([np.asarray(w[layer][0], np.float32) for w in rows])
            biases = np.stack([np.asarray(w[layer][1], np.float32)[None] for w in rows])
            self.params += [nn.Parameter(_tensor(kernels)), nn.Parameter(_tensor(biases))]
        self.optimizer = torch_optimizer(self.params, cell.optimizer_spec)

        # The Lightning engine's sampler: one flat, seed-major index tensor per step, laid out
        # once here, so a step gathers every seed's batch with one index_select.
        self.n_rows = len(rows)
        self.sampler = SeedOrderSampler(orders, cell.batch_size)
        self.x, self.y = _tensor(data.x_train), _tensor(data.y_train)
        self.x_val = _tensor(data.x_val).expand(self.n_rows, -1, -1).contiguous()
        self.y_val = _tensor(data.y_val).expand(self.n_rows, -1).contiguous()
        self.rows: list[np.ndarray] = []
        self.steps = 0

    @property
    def steps_per_epoch(self) -> int:
        """Updates in one epoch."""
        return len(self.sampler)

    def train(self, epochs: int) -> None:
        """Train the next ``epochs`` epochs, each followed by validation of every seed."""
        for _ in range(epochs):
            if len(self.rows) >= self.cell.epochs:
                return
            self.sampler.set_epoch(len(self.rows))
            self._epoch()

    def _epoch(self) -> None:
        n_rows = self.n_rows
        loss_sum = torch.zeros(n_rows, dtype=torch.float64)
        correct = torch.zeros(n_rows, dtype=torch.int64)
        seen = 0
        for index in self.sampler:
            x = self.x.index_select(0, index).view(n_rows, -1, self.x.shape[1])
            y = self.y.index_select(0, index).view(n_rows, -1)
            logits = seed_logits(self.params, x)
            loss, hits = seed_metrics(logits, y)

            with torch.no_grad():
                loss_sum.add_(loss.detach().double(), alpha=y.shape[1])
                correct.add_(hits)
            seen += y.shape[1]

            # The sum over seeds: each seed's gradient is exactly its own run's gradient.
            self.optimizer.zero_grad()
            loss.sum().backward()
            self.optimizer.step()
            self.steps += 1

        with torch.no_grad():
            val_loss, val_hits = seed_metrics(seed_logits(self.params, self.x_val), self.y_val)
        val_acc = val_hits.double() / self.y_val.shape[1]
        table = torch.stack([loss_sum / seen, correct.double() / seen, val_loss.double(), val_acc])
        self.rows.append(table.T[: self.seeds].numpy())

    def outputs(self) -> list[TrainOutput]:
        """One :class:`TrainOutput` per seed, in seed order; ``diverged`` marks non-finite loss."""
        table = np.stack(self.rows) if self.rows else np.zeros((0, self.seeds, 4))
        outputs = []
        for s in range(self.seeds):
            weights = [
                (kernel[s].detach().numpy().copy(), bias[s, 0].detach().numpy().copy())
                for kernel, bias in zip(self.params[0::2], self.params[1::2], strict=True)
            ]
            history = table[:, s].astype(np.float64)
            outputs.append(
                TrainOutput(
                    history=history,
                    final_weights=weights,
                    diverged=not bool(np.isfinite(history[:, 0]).all()),
                    steps=self.steps,
                )
            )
        return outputs
