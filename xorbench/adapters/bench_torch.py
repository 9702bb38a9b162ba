"""Training runs of the plain torch loop and of Lightning, built for the speed benchmarks.

:func:`prepare` builds a run the way the engine's ``fit`` builds it and returns a
:class:`~xorbench.adapters.paused.PreparedRun`: ``start()`` does the start-up and the warm-up
epochs, ``resume()`` trains the timed epochs and nothing else, ``finish()`` shuts down. A
Lightning run is one ``Trainer.fit`` over all its epochs, parked between the warm-up and the
timed epochs by :class:`~xorbench.adapters.paused.PausedFit`; its timed window opens at the
``on_train_epoch_start`` of the first timed epoch and closes at ``on_train_end``, so it holds
whole epochs (steps, validation and Lightning's per-epoch work) and no start-up or shut-down.

The Lightning runs are assembled from the pieces the engines' own ``fit`` uses, several of
them private to those modules (the loaders, the quiet and determinism contexts): the adapters
have no public build/train split yet, and a copy of those pieces could drift from what the grid
runs. The tests check that a prepared run trains exactly what ``fit`` trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import lightning
import numpy as np

from xorbench.adapters import lightning as lightning_adapter
from xorbench.adapters import lightning_batched
from xorbench.adapters.paused import PausedFit, PreparedRun
from xorbench.adapters.torch_loop import TorchLoop, TorchSeedLoop
from xorbench.data import Dataset
from xorbench.grid import Cell
from xorbench.model import Weights

FRAMEWORKS: tuple[str, ...] = ("torch", "lightning")


class LoopRun:
    """A plain-loop run: warm-up epochs in :meth:`start`, timed epochs in :meth:`resume`."""

    def __init__(self, loop: TorchLoop | TorchSeedLoop, warmup: int, timed: int) -> None:
        self.loop = loop
        self.warmup = warmup
        self.timed = timed

    def start(self) -> None:
        """Train the warm-up epochs."""
        self.loop.train(self.warmup)

    def resume(self) -> None:
        """Train the timed epochs."""
        self.loop.train(self.timed)

    def finish(self) -> None:
        """Nothing to shut down."""


class _Gate(lightning.Callback):
    """Calls the PausedFit's hooks: at the first timed epoch's start and at the end of training."""

    def __init__(self, paused: PausedFit, warmup: int) -> None:
        self.paused = paused
        self.warmup = warmup
        self.epochs_started = 0

    def on_train_epoch_start(self, trainer: lightning.Trainer, module: Any) -> None:
        self.epochs_started += 1
        if self.epochs_started == self.warmup + 1:
            self.paused.timed_epochs_begin()

    def on_train_end(self, trainer: lightning.Trainer, module: Any) -> None:
        self.paused.timed_epochs_end()


class LightningRun:
    """A Lightning run (per-run or seed-batched) in one ``Trainer.fit``, paused after warm-up.

    Attributes
    ----------
    module
        The ``XorModule`` or ``SeedBatchedModule`` being trained.
    trainer
        The engine's own Trainer (``make_trainer``), with a gate callback added.
    """

    def __init__(
        self,
        module: lightning.LightningModule,
        trainer: lightning.Trainer,
        loaders: dict[str, Any],
        warmup: int,
        cleanup: contextlib.ExitStack,
    ) -> None:
        self.module = module
        self.trainer = trainer
        self.loaders = loaders
        self._cleanup = cleanup
        self._paused = PausedFit(self._fit, name="lightning-fit")
        # The Trainer's list of callbacks is set at run time (by its callback connector), so
        # the type checker does not see it; fit reads it when it starts.
        callbacks: list[lightning.Callback] = trainer.callbacks  # type: ignore[attr-defined]
        callbacks.append(_Gate(self._paused, warmup))

    def _fit(self) -> None:
        with lightning_adapter._quiet_lightning():
            self.trainer.fit(self.module, **self.loaders)

    def start(self) -> None:
        """Start ``Trainer.fit`` and train the warm-up epochs."""
        self._paused.start()

    def resume(self) -> None:
        """Train the timed epochs."""
        self._paused.resume()

    def finish(self) -> None:
        """Let ``fit`` end, then undo the process-wide flags its Trainer set."""
        try:
            self._paused.finish()
        finally:
            self._cleanup.close()


def _lightning_per_run(cell: Cell, data: Dataset, initial: Weights, orders: np.ndarray,
                       warmup: int) -> LightningRun:
    """What :func:`xorbench.adapters.lightning.fit` builds, validation every epoch."""
    la = lightning_adapter
    module = la.XorModule(cell.hidden, cell.optimizer_spec)
    module.set_weights(initial)
    loaders = {
        "train_dataloaders": la._loader(
            la._IndexedTensors(data.x_train, data.y_train),
            la.EpochOrderSampler(orders, cell.batch_size),
        ),
        "val_dataloaders": la._loader(
            la._IndexedTensors(data.x_val, data.y_val), la._WholeSetSampler(len(data.x_val))
        ),
    }

    # fit builds its Trainer inside this context, and Trainer(deterministic=True) sets its
    # process-wide flags when it is built; they stay on until finish(), as during fit.
    cleanup = contextlib.ExitStack()
    cleanup.enter_context(la._restore_determinism())
    try:
        with la._quiet_lightning():
            trainer = la.make_trainer(cell.epochs, val_every=1)
    except BaseException:
        cleanup.close()
        raise
    return LightningRun(module, trainer, loaders, warmup, cleanup)


def _lightning_batched(cell: Cell, data: Dataset, initials: Sequence[Weights],
                       orders: np.ndarray, warmup: int) -> LightningRun:
    """What :func:`xorbench.adapters.lightning_batched.fit_batched` builds, padding included."""
    lb = lightning_batched
    n_seeds = len(initials)
    filler = -n_seeds % lb.SEED_ROWS
    rows = [*initials, *[initials[0]] * filler]
    orders = np.concatenate([orders, np.repeat(orders[:1], filler, axis=0)])
    module = lb.SeedBatchedModule(
        rows, cell.hidden, cell.optimizer_spec, data.x_val, data.y_val, reported=n_seeds
    )
    loaders = {"train_dataloaders": lb._train_loader(data, orders, cell.batch_size)}
    with lightning_adapter._quiet_lightning():
        trainer = lb.make_trainer(cell.epochs)
    return LightningRun(module, trainer, loaders, warmup, contextlib.ExitStack())


def prepare(cell: Cell, data: Dataset, initials: Sequence[Weights], orders: np.ndarray,
            engine: str, warmup: int = 1) -> PreparedRun:
    """Build a run of ``cell`` for timing; nothing is trained until ``start()``.

    Parameters
    ----------
    cell
        The grid point; ``cell.framework`` is ``"torch"`` (the plain loop) or ``"lightning"``,
        and ``cell.epochs`` counts the warm-up and the timed epochs.
    data
        Training and validation sets.
    initials
        Each seed's starting weights in Keras layout; exactly one for the per-run engine.
    orders
        int array of shape (seeds, epochs, n_train): each seed's training indices per epoch.
    engine
        ``"per-run"`` or ``"batched"``.
    warmup
        Epochs trained by ``start()``, before the timed ones; at least 1, so first-call costs
        (optimizer state, autograd's first pass) stay out of the timed epochs.

    Returns
    -------
    PreparedRun
        ``start()`` trains the warm-up epochs, ``resume()`` the other ``cell.epochs - warmup``.
    """
    if cell.framework not in FRAMEWORKS:
        raise ValueError(
            f"framework must be one of {', '.join(FRAMEWORKS)}; received {cell.framework!r}"
        )
    if engine not in ("per-run", "batched"):
        raise ValueError(f"engine must be one of per-run, batched; received {engine!r}")
    if not 1 <= warmup < cell.epochs:
        raise ValueError(
            f"warmup must be in [1, cell.epochs = {cell.epochs}), so that some epochs are timed; "
            f"received {warmup}"
        )
    orders = np.asarray(orders)
    if engine == "per-run" and (len(initials) != 1 or len(orders) != 1):
        raise ValueError(
            f"the per-run engine trains one seed; received {len(initials)} initial weights "
            f"and orders for {len(orders)} seeds"
        )

    timed = cell.epochs - warmup
    if cell.framework == "torch" and engine == "per-run":
        return LoopRun(TorchLoop(cell, data, initials[0], orders[0]), warmup, timed)
    if cell.framework == "torch":
        return LoopRun(TorchSeedLoop(cell, data, initials, orders), warmup, timed)
    if engine == "per-run":
        return _lightning_per_run(cell, data, initials[0], orders[0], warmup)
    return _lightning_batched(cell, data, initials, orders, warmup)
