"""The PyTorch Lightning adapter: one run trained by a real ``lightning.Trainer``.

The network is an ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU`` whose last layer outputs a
logit; the loss is binary cross-entropy from that logit. Initial weights come in Keras layout and
are loaded through :func:`xorbench.model.to_torch_layout` (``Linear.weight = kernel.T``).

Batches follow the caller's ``orders`` exactly: a sampler yields one index tensor per batch, the
consecutive slices of ``orders[epoch]``, and the dataset answers a whole index tensor at once, so
no per-sample collation runs and no draw is taken from torch's global generator (field case F7).
Lightning tells the sampler the epoch through ``set_epoch`` before each training epoch.

The epoch's training loss and accuracy are accumulated on the module by hand, weighted by batch
size, instead of through ``self.log``, which costs about half a millisecond per step here.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning
import numpy as np
import torch
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn
from torch.nn import functional
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from xorbench.adapters.base import DTYPES, HISTORY_METRICS, Trace, TrainOutput, check_orders
from xorbench.data import Dataset, batch_bounds
from xorbench.grid import Cell
from xorbench.model import Weights, flatten, from_torch_layout, layer_sizes, to_torch_layout
from xorbench.optimizers import OptimizerSpec, asgd_averaging_active, torch_kwargs

log = logging.getLogger(__name__)

FRAMEWORK = "lightning"

_TORCH_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "asgd": torch.optim.ASGD,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
}

# Lightning's start-up and shutdown notes that say nothing about a CPU-only, single-process run.
# They are info records of this logger; anything else it says still gets through.
_LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
_NOISE_PREFIXES: tuple[str, ...] = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "`Trainer.fit` stopped: `max_epochs=",
    "💡 Tip: For seamless cloud logging",
)


def torch_optimizer(params: Iterable[Tensor], spec: OptimizerSpec) -> torch.optim.Optimizer:
    """Build the torch optimizer of ``spec`` with every hyperparameter written out.

    Parameters
    ----------
    params
        The parameters to optimize.
    spec
        The optimizer's name and learning rate; the other hyperparameters come from
        :func:`xorbench.optimizers.torch_kwargs`, never from a library default.

    Returns
    -------
    torch.optim.Optimizer
        A ``torch.optim.SGD``, ``ASGD``, ``RMSprop`` or ``Adam``.
    """
    if spec.name not in _TORCH_OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {', '.join(_TORCH_OPTIMIZERS)}; received {spec.name!r}"
        )
    return _TORCH_OPTIMIZERS[spec.name](params, **torch_kwargs(spec))


def optimizer_settings(
    spec: OptimizerSpec, impl: str = "native", dtype: str = "float32"
) -> dict[str, Any]:
    """What torch's optimizer object for ``spec`` holds, read back from a live object.

    Returns ``{"class": ..., "settings": optimizer.defaults, "library_defaults": ...}``, the
    last from the same class built with only its parameters. ``impl`` and ``dtype`` change
    nothing on the torch side (torch keeps hyperparameters as Python numbers); they are taken
    so that both frameworks answer the same request.
    """
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch_optimizer([param], spec)
    cls: Any = type(optimizer)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "settings": dict(optimizer.defaults),
        "library_defaults": dict(cls([nn.Parameter(torch.zeros(1))]).defaults),
    }


def build_network(hidden: Sequence[int]) -> nn.Sequential:
    """The MLP 2 -> hidden -> 1 as ``nn.Linear`` layers with ReLU between them; float32.

    The parameters are left uninitialized: load weights before use. torch's default
    initialization would draw from the global generator, shifting the random stream of
    everything that runs after it in the process, and the loaded weights replace it anyway.
    """
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(layer_sizes(hidden)):
        layers += [nn.utils.skip_init(nn.Linear, fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class _IndexedTensors(TorchDataset[tuple[Tensor, Tensor]]):
    """Inputs and targets as tensors; an item is a whole batch, addressed by an index tensor."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: Tensor) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]


class EpochOrderSampler(Sampler[Tensor]):
    """Yield the batches of ``orders[epoch]``: consecutive slices of ``batch_size`` indices.

    Lightning calls :meth:`set_epoch` with the epoch's index before each training epoch, so the
    order depends on the epoch alone, not on how often or when the loader is iterated.
    """

    def __init__(self, orders: np.ndarray, batch_size: int) -> None:
        # One row per epoch; a batch is the slice ``rows[epoch, start:stop]``.
        self.rows = torch.from_numpy(np.ascontiguousarray(orders, dtype=np.int64))
        self.bounds = batch_bounds(self.rows.shape[1], batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        if not 0 <= epoch < len(self.rows):
            raise ValueError(
                f"epoch must be in [0, {len(self.rows)}) (the epochs of orders); "
                f"received epoch={epoch}"
            )
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self) -> Iterator[Tensor]:
        row = self.rows[self.epoch]
        for start, stop in self.bounds:
            yield row[start:stop]


class _WholeSetSampler(Sampler[Tensor]):
    """Yield every index of a dataset as one batch."""

    def __init__(self, n: int) -> None:
        self.index = torch.arange(n)

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[Tensor]:
        yield self.index


def _as_batch(batch: Any) -> Any:
    """Collate function of a loader whose items already are batches: pass them through.

    torch's own default would walk the (x, y) tuple and rebuild it on every step.
    """
    return batch


def _loader(dataset: _IndexedTensors, sampler: Sampler[Tensor]) -> DataLoader:
    # batch_size=None turns off automatic batching: each sampled index tensor is one item.
    # The loader gets its own generator, because creating an iterator draws a base seed from
    # torch's global generator otherwise, even when nothing is shuffled.
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        collate_fn=_as_batch,
        num_workers=0,
        generator=torch.Generator(),
    )


@dataclass(slots=True)
class _Tally:
    """Running sums of a run and its current epoch.

    A plain object on purpose: every attribute write on an ``nn.Module`` goes through its
    ``__setattr__``, which is slow enough to show up in a per-step budget of a millisecond.
    """

    steps: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    val_loss: float = math.nan
    val_acc: float = math.nan

    def start_epoch(self) -> None:
        """Zero the epoch's sums; validation values stay NaN unless the epoch is validated."""
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0
        self.val_loss, self.val_acc = math.nan, math.nan


class XorModule(lightning.LightningModule):
    """The XOR MLP with its loss, its optimizer and per-epoch bookkeeping for xorbench.

    Parameters
    ----------
    hidden
        Widths of the hidden layers, such as (3, 4).
    spec
        The optimizer and its learning rate.

    Attributes
    ----------
    rows
        One (train_loss, train_acc, val_loss, val_acc) tuple per finished epoch; the validation
        values are NaN for an epoch that was not validated.
    diverged
        Whether a training loss was not finite; training stops at the end of that epoch.
    """

    def __init__(self, hidden: Sequence[int], spec: OptimizerSpec) -> None:
        super().__init__()
        self.net = build_network(hidden)
        self.spec = spec
        self.rows: list[tuple[float, float, float, float]] = []
        self.diverged = False
        self._tally = _Tally()
        self._optimizer: torch.optim.Optimizer | None = None
        self._swapped_out: list[Tensor] | None = None

    @property
    def steps(self) -> int:
        """Optimizer updates made so far."""
        return self._tally.steps

    # -- weights ---------------------------------------------------------------------------

    def set_weights(self, weights: Weights) -> None:
        """Copy Keras-layout ``weights`` into the ``Linear`` layers (each kernel transposed)."""
        linears = self._linears()
        if len(weights) != len(linears):
            raise ValueError(
                f"weights must have one (kernel, bias) pair per layer, {len(linears)} here; "
                f"received {len(weights)}"
            )
        with torch.no_grad():
            for layer, (weight, bias) in zip(linears, to_torch_layout(weights), strict=True):
                if weight.shape != layer.weight.shape or bias.shape != layer.bias.shape:
                    fan_out, fan_in = layer.weight.shape
                    raise ValueError(
                        f"layer {fan_in} -> {fan_out} needs a kernel of shape ({fan_in}, "
                        f"{fan_out}) and a bias of shape ({fan_out},); received kernel "
                        f"{weight.T.shape} and bias {bias.shape}"
                    )
                layer.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
                layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))

    def get_weights(self, dtype: Any = np.float32) -> Weights:
        """The current weights in Keras layout, copies of type ``dtype``."""
        return _to_weights(list(self.parameters()), dtype)

    def final_weights(self) -> Weights:
        """The weights to report: ASGD's averaged iterate when averaging was active."""
        averaged = self._averaged_iterate()
        return self.get_weights() if averaged is None else _to_weights(averaged)

    def averaging_active(self) -> bool | None:
        """For ASGD, whether the average has left the iterates so far; None otherwise."""
        if self.spec.name != "asgd":
            return None
        return asgd_averaging_active(self._tally.steps, float(torch_kwargs(self.spec)["t0"]))

    def _linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def _averaged_iterate(self) -> list[Tensor] | None:
        """ASGD's ``ax`` for every parameter when averaging was active, else None."""
        if not self.averaging_active() or self._optimizer is None:
            return None
        state = self._optimizer.state
        return [state[p]["ax"] for p in self.parameters()]

    # -- computation -----------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Logits of shape (n,) for inputs of shape (n, 2)."""
        return self.net(x).squeeze(-1)

    @staticmethod
    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        """Mean binary cross-entropy computed from logits; finite however large the logits."""
        return functional.binary_cross_entropy_with_logits(logits, targets)

    @staticmethod
    def correct(logits: Tensor, targets: Tensor) -> int:
        """How many samples are classified right: class 1 where the logit is > 0."""
        return int(((logits > 0) == (targets > 0.5)).sum())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of ``spec``, kept so the ASGD average can be read back."""
        self._optimizer = torch_optimizer(self.parameters(), self.spec)
        return self._optimizer

    # -- training --------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        """Reset the epoch's running sums and validation values."""
        self._tally.start_epoch()

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Loss of one batch, before its update; adds it to the epoch's sums."""
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)

        # Weighted by batch size, so a smaller last batch counts for its samples only (F5).
        tally = self._tally
        tally.loss_sum += float(loss.detach()) * len(y)
        tally.correct += self.correct(logits.detach(), y)
        tally.seen += len(y)
        tally.steps += 1
        return loss

    def on_train_epoch_end(self) -> None:
        """Record the epoch's row; stop after this epoch when its loss was not finite."""
        tally = self._tally
        train_loss = tally.loss_sum / tally.seen
        self.rows.append((train_loss, tally.correct / tally.seen, tally.val_loss, tally.val_acc))
        if not math.isfinite(train_loss):
            self.diverged = True
            self.trainer.should_stop = True

    # -- validation ------------------------------------------------------------------------

    def on_validation_start(self) -> None:
        """Evaluate ASGD's averaged iterate instead of the last one when averaging is active."""
        averaged = self._averaged_iterate()
        if averaged is None:
            return
        with torch.no_grad():
            self._swapped_out = [p.detach().clone() for p in self.parameters()]
            for p, a in zip(self.parameters(), averaged, strict=True):
                p.copy_(a)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss and accuracy on the whole validation set, one batch."""
        x, y = batch
        logits = self(x)
        self._tally.val_loss = float(self.loss(logits, y))
        self._tally.val_acc = self.correct(logits, y) / len(y)

    def on_validation_end(self) -> None:
        """Put the last iterate back after validating the averaged one."""
        if self._swapped_out is None:
            return
        with torch.no_grad():
            for p, saved in zip(self.parameters(), self._swapped_out, strict=True):
                p.copy_(saved)
        self._swapped_out = None


def _to_weights(tensors: list[Tensor], dtype: Any = np.float32) -> Weights:
    """Keras-layout copies of torch parameters given as weight, bias, weight, ..."""
    pairs = [
        (
            weight.detach().numpy().astype(dtype, copy=True),
            bias.detach().numpy().astype(dtype, copy=True),
        )
        for weight, bias in zip(tensors[0::2], tensors[1::2], strict=True)
    ]
    return from_torch_layout(pairs)


# ---------------------------------------------------------------------------------------------
# fit


def _check_inputs(cell: Cell, data: Dataset, orders: np.ndarray, val_every: int) -> None:
    """Raise ValueError for inputs that break the adapter contract."""
    if cell.framework != FRAMEWORK:
        raise ValueError(
            f"cell.framework must be {FRAMEWORK!r} for this adapter; received {cell.framework!r}"
        )
    if isinstance(val_every, bool) or not isinstance(val_every, int) or val_every < 1:
        raise ValueError(f"val_every must be an integer >= 1; received {val_every!r}")
    check_orders(orders, (cell.epochs, data.n_train), data.n_train)


class _DropNoise(logging.Filter):
    """Drop Lightning's hardware and shutdown notes, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE_PREFIXES)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence the notes and warnings that are only noise for one tiny CPU run."""
    logger = logging.getLogger(_LIGHTNING_INFO_LOGGER)
    noise = _DropNoise()
    logger.addFilter(noise)
    try:
        with warnings.catch_warnings():
            # The data already sit in memory as tensors: worker processes would only add cost.
            warnings.filterwarnings(
                "ignore", message=r".*does not have many workers.*", category=PossibleUserWarning
            )
            # Lightning 2.6 builds torch's deprecated LeafSpec when it wraps the loaders; harmless
            # here. https://github.com/Lightning-AI/pytorch-lightning/issues/21326
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
            )
            yield
    finally:
        logger.removeFilter(noise)


@contextmanager
def _restore_determinism() -> Iterator[None]:
    """Undo the process-wide flags that ``Trainer(deterministic=True)`` sets, after the run."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


# Lightning's precision setting per float type: "64-true" converts the module and every batch
# to float64 (torch's optimizers then keep their state in the parameters' type).
_PRECISION: dict[str, str] = {"float32": "32-true", "float64": "64-true"}


def make_trainer(
    epochs: int,
    val_every: int = 1,
    dtype: str = "float32",
    callbacks: Sequence[lightning.Callback] = (),
) -> lightning.Trainer:
    """A CPU Trainer with every extra off: progress bar, checkpoints, summary, logger, sanity."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; received {dtype!r}")
    return lightning.Trainer(
        precision=_PRECISION[dtype],  # type: ignore[arg-type]
        callbacks=list(callbacks),
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        check_val_every_n_epoch=val_every,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=False,
        deterministic=True,
    )


def fit(
    cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray, val_every: int = 1
) -> TrainOutput:
    """Train one run of ``cell`` with a Lightning Trainer, per :mod:`xorbench.adapters.base`.

    Parameters
    ----------
    cell
        The grid point: optimizer, batch size, learning rate, epochs and hidden widths.
    data
        Training and validation sets.
    initial
        Starting weights in Keras layout (kernel [in, out]).
    orders
        int array of shape (epochs, n_train): the training indices of each epoch, in order.
    val_every
        Validate every this many epochs (default 1: every epoch); the other epochs get NaN
        validation values.

    Returns
    -------
    TrainOutput
        History of shape (epochs_trained, 4), final float32 weights in Keras layout, whether the
        run diverged, whether ASGD averaged, and the number of updates.
    """
    module = _train(cell, data, initial, orders, val_every)
    return TrainOutput(
        history=_history(module),
        final_weights=module.final_weights(),
        diverged=module.diverged,
        asgd_averaging=module.averaging_active(),
        steps=module.steps,
    )


def _history(module: XorModule) -> np.ndarray:
    return np.array(module.rows, dtype=np.float64).reshape(-1, len(HISTORY_METRICS))


def _train(
    cell: Cell,
    data: Dataset,
    initial: Weights,
    orders: np.ndarray,
    val_every: int = 1,
    dtype: str = "float32",
    callbacks: Sequence[lightning.Callback] = (),
) -> XorModule:
    """Train one run with a Trainer in ``dtype`` and return the trained module."""
    orders = np.asarray(orders)
    _check_inputs(cell, data, orders, val_every)

    # One thread is fastest for a network this small; the runner sets it too.
    torch.set_num_threads(1)

    module = XorModule(cell.hidden, cell.optimizer_spec)
    module.set_weights(initial)
    train = _loader(
        _IndexedTensors(data.x_train, data.y_train),
        EpochOrderSampler(orders, cell.batch_size),
    )
    val = _loader(_IndexedTensors(data.x_val, data.y_val), _WholeSetSampler(len(data.x_val)))

    with _quiet_lightning(), _restore_determinism():
        trainer = make_trainer(cell.epochs, val_every, dtype, callbacks)
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val)

    if module.diverged:
        log.info("%s diverged at epoch %d", cell.key, len(module.rows))
    return module


class _WeightTrace(lightning.Callback):
    """Flattened iterates, in the module's float type, at the start and after every epoch."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def on_train_start(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self._record(pl_module)

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self._record(pl_module)

    def _record(self, module: XorModule) -> None:
        dtype = next(module.parameters()).detach().numpy().dtype
        self.rows.append(flatten(module.get_weights(dtype)))


def trace(
    cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray, dtype: str = "float32"
) -> Trace:
    """Train ``cell`` as :func:`fit` does, in ``dtype``, keeping the weights of every epoch.

    Row 0 of the weights is read back from the module when training starts (after Lightning
    converted it to ``dtype``), so a layout mistake on the way in shows in the parity table.
    """
    recorder = _WeightTrace()
    module = _train(cell, data, initial, orders, dtype=dtype, callbacks=[recorder])
    return Trace(
        history=_history(module),
        weights=np.vstack(recorder.rows).astype(np.float64),
        asgd_averaging=module.averaging_active(),
        steps=module.steps,
    )
