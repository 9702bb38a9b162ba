"""Seed-batched Lightning engine: every seed of a cell in one module, one Trainer.fit.

Each parameter carries a leading seed axis: kernels have shape (seeds, in, out) and biases
(seeds, 1, out), in Keras layout, and a batch of inputs has shape (seeds, batch, 2); the forward
pass is one ``torch.baddbmm`` per layer. Seed ``s`` gets its own batch order: batch ``j`` of
epoch ``e`` holds the training points ``orders[s, e, j*B:(j+1)*B]``.

The training loss is the sum over seeds of each seed's batch-mean binary cross-entropy, so the
gradient of seed ``s``'s slice is exactly the gradient of its own run. SGD, ASGD, RMSprop and
Adam update every element from its own gradient and state, and their step counters are shared
and equal, so each slice follows the run that :mod:`xorbench.adapters.lightning` would train.

The seed axis is padded with copies of seed 0 to a multiple of :data:`SEED_ROWS` rows, which are
trained and never reported. torch's elementwise CPU kernels run the body of a tensor through SIMD
code and its last few elements through scalar code, and the two can round differently (a
vectorised exp against libm's); with every tensor a whole number of SIMD chunks, a seed's
arithmetic depends neither on how many seeds share the batch nor on its place among them, so the
first 5 seeds of a 100-seed experiment are bit for bit those of a 5-seed one.

A seed whose epoch training loss is not finite keeps that epoch's row and is frozen: after every
later optimizer step its slice is put back, so neither its gradient (NaN) nor its momentum or
Adam state moves it, and the other seeds never see it. Training stops early only when every seed
has diverged.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning
import numpy as np
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor, nn
from torch.nn import functional
from torch.optim import Optimizer
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from xorbench.adapters.base import HISTORY_METRICS, TrainOutput, check_orders
from xorbench.adapters.lightning import EpochOrderSampler, _quiet_lightning, torch_optimizer
from xorbench.data import Dataset, batch_bounds
from xorbench.grid import Cell
from xorbench.model import Weights, layer_sizes
from xorbench.optimizers import OptimizerSpec, asgd_averaging_active, torch_kwargs

log = logging.getLogger(__name__)

FRAMEWORK = "lightning"

# Seed rows are padded to a multiple of this: 2 AVX-512 float vectors, the chunk of torch's
# vectorised CPU loops (and a multiple of the AVX2 and NEON chunks).
SEED_ROWS = 32


# ---------------------------------------------------------------------------------------------
# Batches


class _SeedGather(TorchDataset[tuple[Tensor, Tensor]]):
    """The training set as tensors; an item is one batch of every seed, by a flat index tensor.

    The index holds ``seeds * B`` training indices, seed-major; the item is the inputs
    (seeds, B, 2) and targets (seeds, B).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, seeds: int) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        self.seeds = seeds

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: Tensor) -> tuple[Tensor, Tensor]:
        # index_select on a flat index is several times cheaper than x[index] with a 2-D index.
        x = self.x.index_select(0, index).view(self.seeds, -1, self.x.shape[1])
        return x, self.y.index_select(0, index).view(self.seeds, -1)


class SeedOrderSampler(EpochOrderSampler):
    """Yield one flat index tensor per step: batch ``j`` of every seed's order, seed-major.

    Parameters
    ----------
    orders
        int array of shape (seeds, epochs, n_train): each seed's training indices per epoch.
    batch_size
        Samples per batch; the last batch of an epoch may be smaller.

    Lightning calls :meth:`set_epoch` before each training epoch, so what is yielded depends on
    the epoch alone, never on torch's global generator.
    """

    def __init__(self, orders: np.ndarray, batch_size: int) -> None:
        seeds, epochs, n_train = orders.shape
        self.bounds = [
            (seeds * start, seeds * stop) for start, stop in batch_bounds(n_train, batch_size)
        ]

        # Each epoch's row holds its batches one after the other, each (seeds, B) flattened, so
        # a step is a contiguous slice of a row; one layout pass here, none per step.
        blocks = [
            np.swapaxes(orders[:, :, start:stop], 0, 1).reshape(epochs, -1)
            for start, stop in batch_bounds(n_train, batch_size)
        ]
        self.rows = torch.from_numpy(np.concatenate(blocks, axis=1).astype(np.int64))
        self.epoch = 0


def _as_batch(batch: Any) -> Any:
    """Collate function for items that already are whole batches: pass them through."""
    return batch


def _train_loader(data: Dataset, orders: np.ndarray, batch_size: int) -> DataLoader:
    # batch_size=None: each sampled index tensor is one item, no per-sample collation. The
    # loader's own generator keeps iterator creation off torch's global generator.
    return DataLoader(
        _SeedGather(data.x_train, data.y_train, len(orders)),
        batch_size=None,
        sampler=SeedOrderSampler(orders, batch_size),
        collate_fn=_as_batch,
        num_workers=0,
        generator=torch.Generator(),
    )


# ---------------------------------------------------------------------------------------------
# The module


def seed_logits(params: Sequence[Tensor], x: Tensor) -> Tensor:
    """Logits of shape (seeds, n) for inputs (seeds, n, 2); params are kernel, bias, ... per layer.

    Kernels have shape (seeds, in, out) and biases (seeds, 1, out); ReLU between layers.
    """
    h = x
    layers = len(params) // 2
    for i in range(layers):
        h = torch.baddbmm(params[2 * i + 1], h, params[2 * i])
        if i < layers - 1:
            h = torch.relu(h)
    return h.squeeze(-1)


def seed_metrics(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-seed mean BCE from logits and per-seed count of right classes, both of shape (seeds,)."""
    loss = functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    correct = ((logits > 0) == (targets > 0.5)).sum(1)
    return loss, correct


class SeedBatchedModule(lightning.LightningModule):
    """The XOR MLP for many seeds at once, with per-seed bookkeeping and freezing.

    Parameters
    ----------
    initials
        One list of Keras-layout (kernel, bias) pairs per seed.
    hidden
        Widths of the hidden layers, such as (3, 4).
    spec
        The optimizer and its learning rate, shared by every seed.
    x_val, y_val
        The validation set, shapes (n_val, 2) and (n_val,).
    reported
        How many leading seeds are real runs; the rest are filler rows, trained and never
        reported. Default: all of them.

    Attributes
    ----------
    rows
        One float64 tensor of shape (seeds, 4) per finished epoch: train_loss, train_acc,
        val_loss, val_acc.
    steps
        Optimizer updates made so far (shared by every seed).
    epochs_trained, seed_steps
        int64 tensors of shape (seeds,): the epochs and updates that count for each seed.
    active
        bool tensor of shape (seeds,): False for the seeds that diverged.
    """

    def __init__(
        self,
        initials: Sequence[Weights],
        hidden: Sequence[int],
        spec: OptimizerSpec,
        x_val: np.ndarray,
        y_val: np.ndarray,
        reported: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.seeds = len(initials)
        self.reported = self.seeds if reported is None else reported
        self.weights = nn.ParameterList(_stack_initials(initials, hidden))
        self.t0 = float(torch_kwargs(spec)["t0"]) if spec.name == "asgd" else None

        # The validation set repeated per seed, made once: baddbmm wants real batches.
        x = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(y_val, dtype=np.float32))
        self.x_val = x.expand(self.seeds, -1, -1).contiguous()
        self.y_val = y.expand(self.seeds, -1).contiguous()

        self.rows: list[Tensor] = []
        self.steps = 0
        self.epochs_trained = torch.zeros(self.seeds, dtype=torch.int64)
        self.seed_steps = torch.zeros(self.seeds, dtype=torch.int64)
        self.active = torch.ones(self.seeds, dtype=torch.bool)
        self._optimizer: Optimizer | None = None
        self._loss_sum = torch.zeros(self.seeds, dtype=torch.float64)
        self._correct = torch.zeros(self.seeds, dtype=torch.int64)
        self._seen = 0
        # Frozen seeds: the mask, their pinned parameters and the weights they report.
        self._frozen: Tensor | None = None
        self._pinned: list[Tensor] = []
        self._kept: list[Tensor] = []

    # -- computation -----------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (seeds, n) for inputs of shape (seeds, n, 2)."""
        return seed_logits(list(self.weights), x)

    def configure_optimizers(self) -> Optimizer:
        """The optimizer of ``spec`` over the stacked weights, kept to read ASGD's average."""
        self._optimizer = torch_optimizer(self.weights.parameters(), self.spec)
        return self._optimizer

    def averaging_active(self, steps: int | None = None) -> bool | None:
        """For ASGD, whether the average has left the iterates after ``steps``; else None."""
        if self.t0 is None:
            return None
        return asgd_averaging_active(self.steps if steps is None else steps, self.t0)

    def current_weights(self) -> list[Tensor]:
        """The weights to evaluate and report: ASGD's ``ax`` once averaging is active."""
        params = list(self.weights)
        if self._optimizer is None or not self.averaging_active():
            return params
        state = self._optimizer.state
        return [state[p]["ax"] for p in params]

    # -- training --------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        """Reset the epoch's per-seed running sums."""
        self._loss_sum.zero_()
        self._correct.zero_()
        self._seen = 0

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Sum over seeds of each seed's batch-mean loss, before the update; adds to the sums."""
        x, y = batch
        logits = self(x)
        loss, correct = seed_metrics(logits, y)

        # Weighted by batch size in float64, as the per-run engine sums its Python floats.
        n = y.shape[1]
        with torch.no_grad():
            self._loss_sum.add_(loss.detach().double(), alpha=n)
            self._correct.add_(correct)
        self._seen += n
        self.steps += 1

        # d(sum)/d(loss_s) = 1 exactly, so each seed's gradient is its own run's gradient.
        return loss.sum()

    def optimizer_step(
        self,
        epoch: int,
        batch_idx: int,
        optimizer: Optimizer | LightningOptimizer,
        optimizer_closure: Callable[[], Any] | None = None,
    ) -> None:
        """Step every seed, then put the frozen seeds' slices back."""
        optimizer.step(closure=optimizer_closure)
        if self._frozen is None:
            return
        with torch.no_grad():
            for p, pinned in zip(self.weights, self._pinned, strict=True):
                p.copy_(torch.where(self._frozen, pinned, p))

    def on_train_epoch_end(self) -> None:
        """Record each seed's row; freeze the seeds whose loss was not finite this epoch."""
        train_loss = self._loss_sum / self._seen
        train_acc = self._correct.double() / self._seen
        val_loss, val_acc = self._validate()
        self.rows.append(torch.stack([train_loss, train_acc, val_loss, val_acc], dim=1))

        self.epochs_trained += self.active
        self.seed_steps[self.active] = self.steps
        diverging = self.active & ~torch.isfinite(train_loss)
        if bool(diverging.any()):
            self._freeze(diverging)
            if not bool(self.active[: self.reported].any()):
                self.trainer.should_stop = True

    # -- validation and freezing -----------------------------------------------------------

    @torch.no_grad()
    def _validate(self) -> tuple[Tensor, Tensor]:
        """Per-seed validation loss and accuracy after the epoch's last update, float64."""
        loss, correct = seed_metrics(seed_logits(self.current_weights(), self.x_val), self.y_val)
        return loss.double(), correct.double() / self.y_val.shape[1]

    @torch.no_grad()
    def _freeze(self, seeds: Tensor) -> None:
        """Pin the slices of ``seeds`` (bool, shape (seeds,)) and keep the weights they report."""
        log.debug(
            "seed rows %s diverged at epoch %d", seeds.nonzero().flatten().tolist(), len(self.rows)
        )
        mask = seeds.view(-1, 1, 1)
        params = [p.detach() for p in self.weights]
        kept = [w.detach() for w in self.current_weights()]
        if self._frozen is None:
            self._pinned = [p.clone() for p in params]
            self._kept = [w.clone() for w in kept]
            self._frozen = mask.clone()
        else:
            pairs = zip(params, self._pinned, strict=True)
            self._pinned = [torch.where(mask, new, old) for new, old in pairs]
            pairs = zip(kept, self._kept, strict=True)
            self._kept = [torch.where(mask, new, old) for new, old in pairs]
            self._frozen = self._frozen | mask
        self.active &= ~seeds

    def final_weights(self, seed: int) -> Weights:
        """Seed ``seed``'s reported weights in Keras layout, float32 copies."""
        frozen = self._frozen is not None and bool(self._frozen[seed])
        tensors = self._kept if frozen else self.current_weights()
        return [
            (
                kernel[seed].detach().numpy().astype(np.float32, copy=True),
                bias[seed, 0].detach().numpy().astype(np.float32, copy=True),
            )
            for kernel, bias in zip(tensors[0::2], tensors[1::2], strict=True)
        ]

    def outputs(self) -> list[TrainOutput]:
        """One :class:`TrainOutput` per reported seed, in seed order."""
        if self.rows:
            table = torch.stack(self.rows).numpy()
        else:
            table = np.zeros((0, self.seeds, len(HISTORY_METRICS)))
        outputs = []
        for s in range(self.reported):
            steps = int(self.seed_steps[s])
            outputs.append(
                TrainOutput(
                    history=np.array(table[: int(self.epochs_trained[s]), s], dtype=np.float64),
                    final_weights=self.final_weights(s),
                    diverged=not bool(self.active[s]),
                    asgd_averaging=self.averaging_active(steps),
                    steps=steps,
                )
            )
        return outputs


def _stack_initials(initials: Sequence[Weights], hidden: Sequence[int]) -> list[nn.Parameter]:
    """Kernels (seeds, in, out) and biases (seeds, 1, out) as float32 parameters."""
    sizes = layer_sizes(hidden)
    params = []
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        kernels, biases = [], []
        for s, weights in enumerate(initials):
            if len(weights) != len(sizes) - 1:
                raise ValueError(
                    f"initials[{s}] must have one (kernel, bias) pair per layer, "
                    f"{len(sizes) - 1} for hidden={tuple(hidden)}; received {len(weights)}"
                )
            kernel, bias = (np.asarray(a, dtype=np.float32) for a in weights[layer])
            if kernel.shape != (fan_in, fan_out) or bias.shape != (fan_out,):
                raise ValueError(
                    f"initials[{s}] layer {layer} needs a kernel of shape ({fan_in}, {fan_out}) "
                    f"and a bias of shape ({fan_out},); received kernel {kernel.shape} and "
                    f"bias {bias.shape}"
                )
            kernels.append(kernel)
            biases.append(bias.reshape(1, fan_out))
        params.append(nn.Parameter(torch.from_numpy(np.stack(kernels))))
        params.append(nn.Parameter(torch.from_numpy(np.stack(biases))))
    return params


# ---------------------------------------------------------------------------------------------
# fit_batched


def _check_inputs(
    cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray
) -> None:
    """Raise ValueError for inputs that break the seed-batched contract."""
    if cell.framework != FRAMEWORK:
        raise ValueError(
            f"cell.framework must be {FRAMEWORK!r} for this adapter; received {cell.framework!r}"
        )
    if len(initials) < 1:
        raise ValueError("initials must hold the weights of at least one seed; received none")
    check_orders(orders, (len(initials), cell.epochs, data.n_train), data.n_train)


def make_trainer(epochs: int) -> lightning.Trainer:
    """A CPU Trainer with every extra off and no validation loop (validation is per epoch, inline).

    Not ``deterministic=True``: every op here is deterministic on CPU already, and the flag would
    change process-wide state (and make ``torch.empty`` fill memory).
    """
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=False,
    )


def fit_batched(
    cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray
) -> list[TrainOutput]:
    """Train every seed of ``cell`` as one seed-batched model, per :mod:`xorbench.adapters.base`.

    Parameters
    ----------
    cell
        The grid point: optimizer, batch size, learning rate, epochs and hidden widths.
    data
        Training and validation sets, shared by every seed.
    initials
        Seed ``s``'s starting weights in Keras layout (kernel [in, out]), one entry per seed.
    orders
        int array of shape (seeds, epochs, n_train): each seed's training indices per epoch.

    Returns
    -------
    list of TrainOutput
        One per seed, in order: history of shape (epochs_trained, 4), final float32 weights in
        Keras layout (ASGD's average when averaging was active), whether the seed diverged,
        whether ASGD averaged, and the seed's number of updates.
    """
    orders = np.asarray(orders)
    _check_inputs(cell, data, initials, orders)

    # One thread is fastest for a network this small, whatever the number of seeds.
    torch.set_num_threads(1)

    # Filler rows copy seed 0, so they are ordinary runs (see the module docstring).
    n_seeds = len(initials)
    filler = -n_seeds % SEED_ROWS
    rows = [*initials, *[initials[0]] * filler]
    orders = np.concatenate([orders, np.repeat(orders[:1], filler, axis=0)])

    module = SeedBatchedModule(
        rows, cell.hidden, cell.optimizer_spec, data.x_val, data.y_val, reported=n_seeds
    )
    loader = _train_loader(data, orders, cell.batch_size)
    with _quiet_lightning():
        make_trainer(cell.epochs).fit(module, train_dataloaders=loader)

    outputs = module.outputs()
    diverged = [s for s, out in enumerate(outputs) if out.diverged]
    if diverged:
        log.info("%s: %d of %d seeds diverged", cell.key, len(diverged), len(outputs))
    return outputs
