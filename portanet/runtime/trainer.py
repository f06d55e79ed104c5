"""Trainer: fine-tune an IR model on the torch backend and write the weights back into the IR.

    from portanet.runtime.trainer import Trainer, TrainConfig
    trainer = Trainer(model, TrainConfig(epochs=5, optimizer="sgd", lr=0.01))
    history = trainer.fit("mnist/", checkpoint_dir="ckpt", callback=print)
    trained = trainer.export()                 # the same IR object, trained weights written back
    portanet.save(trained, "trained.onnx")

What happens in ``fit``:

* the dataset (``portanet.data``) is fitted to the model input's layout (NCHW/NHWC/flat) and
  normalised with mean/std (computed on the training split unless given);
* cross-entropy trains on logits: a graph that ends in Softmax is trained on the Softmax's
  input (``losses.training_graph``), the exported model keeps its Softmax;
* parameters whose source layer (provenance) or IR name matches a ``freeze`` pattern keep
  their values;
* each epoch: one pass over a seeded permutation of the training split, an evaluation on the
  test split, a checkpoint (model, optimizer, schedule, random state), so ``resume`` continues
  exactly where an interrupted run stopped;
* in a multi-process run (``torchrun`` or ``launch``) the model is wrapped in
  DistributedDataParallel and each worker trains on its ``DistributedSampler`` share of every
  global batch. ``batch_size`` is the *global* batch: a run on N workers takes the same
  steps as a single-process run. Only rank 0 writes checkpoints and calls the callback.

The library never prints: progress goes to the ``callback`` (a ``TrainEvent`` per
``log_every`` batches and per epoch) and to ``logging``.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet._deps import require
from portanet.data import (
    ArrayDataset,
    DataSplits,
    Layout,
    Normalizer,
    input_normalizer,
    load_data,
    plan_layout,
)
from portanet.errors import InvalidInputError
from portanet.ir.io import atomic_write_bytes
from portanet.ir.metadata import set_json
from portanet.ir.shapes import dims_of
from portanet.runtime import distributed
from portanet.runtime.losses import Loss, TrainingGraph, auto_loss, make_loss, training_graph
from portanet.runtime.optim import default_lr, make_optimizer, make_schedule

log = logging.getLogger(__name__)

#: model metadata key holding the training record of an exported model
TRAINING_KEY = "portanet.training"
CHECKPOINT_FORMAT = "portanet-checkpoint-1"
_CKPT_RE = re.compile(r"^epoch-(\d+)\.pt$")


#: integer model input types taken as token ids -> numpy dtype fed to them
_TOKEN_TYPES = {ir.DataType.INT64: np.int64, ir.DataType.INT32: np.int32}


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (every field has a usable default)."""

    epochs: int = 5
    #: global batch size (split evenly across workers in a distributed run)
    batch_size: int = 64
    optimizer: str = "sgd"
    #: learning rate; None = the optimizer's default (sgd 0.01, adam/adamw 0.001)
    lr: float | None = None
    momentum: float = 0.9
    #: None = the optimizer's default (0, AdamW 0.01)
    weight_decay: float | None = None
    schedule: str = "constant"
    step_size: int | None = None
    gamma: float | None = None
    min_lr: float = 0.0
    #: "auto" (cross_entropy for integer labels, mse otherwise), "cross_entropy", "mse"
    loss: str = "auto"
    #: the model output to train (default: the first)
    output: str | None = None
    #: glob patterns (fnmatch) over source layer names / IR names of parameters to keep fixed
    freeze: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    #: mean/std normalisation; statistics from the training split unless ``mean``/``std`` are given
    normalize: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    #: fraction held out for evaluation when the data has no test split
    val_fraction: float = 0.1
    #: report progress to the callback every this many batches
    log_every: int = 10
    #: how many epoch checkpoints to keep (the newest)
    keep_checkpoints: int = 2

    #: fields that must agree between a checkpoint and the run resuming from it
    RESUME_KEYS = ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "step_size",
                   "gamma", "min_lr", "loss", "output", "freeze", "seed", "normalize", "mean", "std")

    def validate(self) -> None:
        if self.epochs < 0:
            raise InvalidInputError(f"epochs must be >= 0, received {self.epochs}")
        if self.batch_size <= 0:
            raise InvalidInputError(f"batch size must be positive, received {self.batch_size}")
        if self.lr is not None and self.lr <= 0:
            raise InvalidInputError(f"learning rate must be positive, received {self.lr}")
        if (self.mean is None) != (self.std is None):
            raise InvalidInputError("give both --mean and --std (or neither)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise InvalidInputError(f"std values must be positive, received {self.std}")
        if self.log_every <= 0:
            raise InvalidInputError(f"log_every must be positive, received {self.log_every}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainEvent:
    """What the progress callback receives.

    ``kind`` is ``"start"`` (before the first batch), ``"batch"`` (every ``log_every`` batches
    and at the last batch of an epoch), ``"epoch"`` (after evaluation; ``metrics`` holds the
    epoch's history row) or ``"end"``. Loss and accuracy of ``"batch"`` events are running
    means over the epoch so far; accuracy is None for non-classification losses.
    """

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    accuracy: float | None = None
    samples_per_s: float | None = None
    lr: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[TrainEvent], None]


class _Sized:
    """Just a length, for DistributedSampler (samples are indexed directly from tensors)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


@dataclass
class _Prepared:
    splits: DataSplits
    layout: Layout
    normalizer: Normalizer
    graph: TrainingGraph
    loss: Loss
    loss_name: str
    out_index: int
    out_shape: tuple[int, ...]
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


class Trainer:
    """Train an IR model with the torch backend; ``export()`` writes the weights back.

    ``model`` is an ``onnx_ir.Model``; ``config`` a ``TrainConfig`` (keyword ``options``
    override its fields, e.g. ``Trainer(model, epochs=3, optimizer="adam")``).
    """

    def __init__(self, model: ir.Model, config: TrainConfig | None = None, **options: Any) -> None:
        self.torch = require("torch")
        self.model = model
        self.config = replace(config or TrainConfig(), **options)
        self.config.validate()
        self.history: list[dict[str, Any]] = []
        self.module: Any = None  # the TorchModule (unwrapped)
        self.ctx: distributed.DistContext | None = None
        self._prep: _Prepared | None = None
        self._started = ""
        self._frozen: list[str] = []
        self._trainable = 0
        self._frozen_count = 0
        self.resumed_from: str | None = None

    # ------------------------------------------------------------------------ preparation
    def prepare(self, data: DataSplits | ArrayDataset | str | os.PathLike[str] | None = None) -> Trainer:
        """Load data, fit it to the model input, lower the model and check targets against outputs.

        Every user error (missing data files, labels outside the output's classes, samples the
        model input cannot take) surfaces here as one ``InvalidInputError`` before training starts.
        """
        torch = self.torch
        from portanet.runtime.torch_backend import lower

        cfg = self.config
        if self.ctx is None:
            self.ctx = distributed.setup(cfg.device)
        splits = self._load(data)
        inputs = [v for v in self.model.graph.inputs if not v.is_initializer()]
        if len(inputs) != 1:
            raise InvalidInputError(
                f"training needs a model with one input, this one has {len(inputs)}: "
                + ", ".join(v.name or "?" for v in inputs)
            )
        inp = inputs[0]
        where = splits.path or "data"
        # integer inputs are token ids (an Embedding / Gather first): fed as they are
        token_dtype = _TOKEN_TYPES.get(inp.dtype) if inp.dtype is not None else None
        if inp.dtype is not None and inp.dtype != ir.DataType.FLOAT and token_dtype is None:
            raise InvalidInputError(f"model input '{inp.name}' is {inp.dtype}; training needs a float32 input "
                                    "(or integer token ids)")
        if token_dtype is not None and splits.train.x.dtype.kind not in "iu":
            raise InvalidInputError(f"{where}: model input '{inp.name}' takes integer token ids ({inp.dtype}), "
                                    f"the samples are {splits.train.x.dtype}")
        layout = plan_layout(splits.train.sample_shape, dims_of(inp), where=where, input_name=inp.name or "input")
        if splits.test.sample_shape != splits.train.sample_shape:
            raise InvalidInputError(
                f"{where}: test samples have shape {list(splits.test.sample_shape)}, training samples "
                f"{list(splits.train.sample_shape)}"
            )
        norm = self._normalizer(splits.train, layout) if token_dtype is None else Normalizer([0.0], [1.0], 1.0)
        loss_name = auto_loss(splits.train.y) if cfg.loss == "auto" else cfg.loss
        loss = make_loss(loss_name)
        graph = training_graph(self.model, cfg.output, logits=loss.classification)
        module = lower(graph.model, self.ctx.device)
        out_index = module.output_names.index(graph.output)

        self._token_dtype = token_dtype
        x_train = torch.from_numpy(self._model_input(splits.train.x, layout, norm))
        x_test = torch.from_numpy(self._model_input(splits.test.x, layout, norm))
        out_shape = self._probe(module, x_train[:2], out_index, inp.name or "input", layout, where)
        loss.check_targets(splits.train.y, out_shape, where=where, output=graph.original_output)
        loss.check_targets(splits.test.y, out_shape, where=where, output=graph.original_output)
        y_train, y_test = (torch.from_numpy(self._targets(y, loss)) for y in (splits.train.y, splits.test.y))
        if self.ctx.device.startswith("cuda") and x_train.nbytes + x_test.nbytes < (1 << 30):
            # small data sets live on the GPU: batches are then gathered without host copies
            x_train, y_train, x_test, y_test = (t.to(self.ctx.device) for t in (x_train, y_train, x_test, y_test))

        self._apply_freeze(module, graph.model)
        self.module = module
        self._prep = _Prepared(splits, layout, norm, graph, loss, loss_name, out_index, out_shape,
                               x_train, y_train, x_test, y_test)
        return self

    def _load(self, data: Any) -> DataSplits:
        cfg = self.config
        if isinstance(data, DataSplits):
            return data
        if isinstance(data, ArrayDataset):
            from portanet.data import holdout

            return holdout(DataSplits(data, data.subset(slice(0, 0)), data.source or "arrays", "arrays"),
                           cfg.val_fraction, cfg.seed)
        return load_data(data, val_fraction=cfg.val_fraction, seed=cfg.seed)

    def _model_input(self, x: np.ndarray, layout: Layout, norm: Normalizer) -> np.ndarray:
        """Samples -> the model input: normalised float32, or token ids unchanged."""
        if getattr(self, "_token_dtype", None) is not None:
            return np.ascontiguousarray(layout.apply(x).astype(self._token_dtype))
        return norm.apply(layout.apply(x))

    def _normalizer(self, train: ArrayDataset, layout: Layout) -> Normalizer:
        cfg = self.config
        return input_normalizer(train.x, layout, mean=cfg.mean, std=cfg.std, normalize=cfg.normalize)

    @staticmethod
    def _targets(y: np.ndarray, loss: Loss) -> np.ndarray:
        if y.dtype.kind in "iub":
            return np.ascontiguousarray(y, dtype=np.int64)
        return np.ascontiguousarray(y, dtype=np.float32)

    def _probe(self, module: Any, x: Any, out_index: int, input_name: str, layout: Layout, where: str) -> tuple:
        """Run two samples through the model to learn the trained output's shape."""
        torch = self.torch
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module(x.to(self.ctx.device))
        except (RuntimeError, ValueError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(
                f"{where}: model input '{input_name}' cannot take samples of shape "
                f"{list(layout.model_shape)} (after the '{layout.rule}' layout): {first}"
            ) from exc
        finally:
            module.train(was_training)
        t = out[out_index] if isinstance(out, tuple) else out
        return tuple(t.shape)

    def _apply_freeze(self, module: Any, graph_model: ir.Model) -> None:
        from portanet.runtime.torch_backend import source_layer_of_param

        patterns = list(self.config.freeze)
        frozen, matched = [], set()
        trainable = frozen_count = 0
        for tname, p in module.named_parameters():
            ir_name = module.param_ir_names.get(tname, tname)
            names = [ir_name]
            layer = source_layer_of_param(graph_model, ir_name)
            if layer:
                names.insert(0, layer)
            hit = [pat for pat in patterns if any(fnmatchcase(n, pat) for n in names)]
            if hit:
                p.requires_grad_(False)
                frozen.append(ir_name)
                matched.update(hit)
                frozen_count += p.numel()
            else:
                trainable += p.numel()
        unmatched = [pat for pat in patterns if pat not in matched]
        if unmatched:
            raise InvalidInputError(
                f"--freeze pattern(s) {', '.join(unmatched)} match no parameter's source layer or name"
            )
        if patterns and trainable == 0:
            raise InvalidInputError(f"--freeze {' '.join(patterns)} freezes every parameter; nothing left to train")
        self._frozen, self._trainable, self._frozen_count = frozen, trainable, frozen_count
        if frozen:
            log.info("frozen: %d parameter tensors (%d values)", len(frozen), frozen_count)

    # ---------------------------------------------------------------------------- training
    def fit(
        self,
        data: DataSplits | ArrayDataset | str | os.PathLike[str] | None = None,
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool | str | os.PathLike[str] = False,
        callback: Callback | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``config.epochs`` epochs; returns the history (one dict per epoch).

        ``data``: a path (IDX directory or ``.npz``), ``DataSplits``/``ArrayDataset``, or None
        for the embedded MNIST subset. ``checkpoint_dir``: write ``epoch-NNN.pt`` there after
        each epoch. ``resume``: True continues from the newest checkpoint in ``checkpoint_dir``,
        a path continues from that checkpoint file.
        """
        torch = self.torch
        if self._prep is None:
            self.prepare(data)
        assert self._prep is not None and self.ctx is not None
        prep, cfg, ctx = self._prep, self.config, self.ctx
        self._started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if cfg.batch_size % ctx.world_size:
            raise InvalidInputError(
                f"batch size {cfg.batch_size} is not divisible by the {ctx.world_size} workers"
            )
        local_bs = cfg.batch_size // ctx.world_size
        module = self.module
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout masks; workers draw different ones

        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg.optimizer, params, lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        scheduler = make_schedule(cfg.schedule, optimizer, epochs=cfg.epochs, step_size=cfg.step_size,
                                  gamma=cfg.gamma, min_lr=cfg.min_lr)
        start_epoch = 0
        ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if resume:
            start_epoch = self._resume(resume, ckpt_dir, optimizer, scheduler)
        net = module
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            names = set(dict(module.named_buffers()))
            stateful = any(n in names for n in module.param_ir_names)  # BatchNorm running stats
            # only models with running statistics need rank 0's buffers at every forward
            sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
                else "broadcast_buffers"
            net = DDP(module, device_ids=[int(ctx.device.split(":")[1])] if ctx.device.startswith("cuda") else None,
                      **{sync: stateful})
        sampler = torch.utils.data.DistributedSampler(
            _Sized(len(prep.y_train)), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=cfg.seed
        )
        steps = math.ceil(sampler.num_samples / local_bs)
        emit = callback if (callback is not None and ctx.is_main) else None
        if emit:
            emit(TrainEvent("start", start_epoch, cfg.epochs, 0, steps, lr=self._lr(optimizer)))
        for epoch in range(start_epoch, cfg.epochs):
            row = self._train_epoch(net, optimizer, sampler, epoch, local_bs, steps, emit)
            evaluation = self.evaluate()
            row.update({f"test_{k}": v for k, v in evaluation.items()})
            if scheduler is not None:
                scheduler.step()
            self.history.append(row)
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))
            if ckpt_dir is not None:
                self._save_checkpoint(ckpt_dir, epoch + 1, optimizer, scheduler)
            if emit:
                emit(TrainEvent("epoch", epoch + 1, cfg.epochs, steps, steps, row.get("train_loss"),
                                row.get("train_accuracy"), row.get("samples_per_s"), row.get("lr"), dict(row)))
        module.eval()
        if emit:
            emit(TrainEvent("end", cfg.epochs, cfg.epochs, steps, steps, metrics=self.final_metrics()))
        return self.history

    @staticmethod
    def _lr(optimizer: Any) -> float:
        return float(optimizer.param_groups[0]["lr"])

    def _forward(self, net: Any, x: Any) -> Any:
        out = net(x)
        return out[self._prep.out_index] if isinstance(out, tuple) else out

    def _train_epoch(self, net: Any, optimizer: Any, sampler: Any, epoch: int, local_bs: int, steps: int,
                     emit: Callback | None) -> dict[str, Any]:
        torch = self.torch
        prep, ctx, cfg = self._prep, self.ctx, self.config
        net.train()
        sampler.set_epoch(epoch)
        # this worker's share of the epoch's permutation; batch k of every worker together
        # form global batch k of a single-process run
        order = torch.tensor(list(iter(sampler)), dtype=torch.int64, device=prep.x_train.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
        seen = 0
        lr = self._lr(optimizer)
        classify = prep.loss.classification
        t0 = time.perf_counter()
        for step, idx in enumerate(order.split(local_bs)):
            xb = prep.x_train.index_select(0, idx).to(ctx.device, non_blocking=True)
            yb = prep.y_train.index_select(0, idx).to(ctx.device, non_blocking=True)
            out = self._forward(net, xb)
            loss = prep.loss(out, yb, prep.graph.kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                loss_sum += loss.detach().double() * len(idx)
                if classify:
                    correct += (prep.loss.predictions(out, yb) == yb).sum()
            seen += len(idx)
            if emit and ((step + 1) % cfg.log_every == 0 or step + 1 == steps):
                rate = seen * ctx.world_size / max(time.perf_counter() - t0, 1e-9)
                emit(TrainEvent("batch", epoch + 1, cfg.epochs, step + 1, steps, loss_sum.item() / seen,
                                correct.item() / seen if classify else None, rate, lr))
        if ctx.device.startswith("cuda"):
            torch.cuda.synchronize(ctx.device)
        elapsed = time.perf_counter() - t0
        total_loss, total_correct, total_seen = ctx.all_reduce_sum([loss_sum.item(), float(correct.item()), seen])
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": total_loss / max(total_seen, 1)}
        if classify:
            row["train_accuracy"] = total_correct / max(total_seen, 1)
        row["seconds"] = elapsed
        row["samples_per_s"] = total_seen / max(elapsed, 1e-9)
        return row

    def evaluate(self, dataset: ArrayDataset | None = None, batch_size: int = 500) -> dict[str, float]:
        """Mean loss (and accuracy for classification) on ``dataset`` (default: the test split).

        In a distributed run each worker evaluates its share and the sums are combined.
        """
        torch = self.torch
        if self._prep is None:
            raise InvalidInputError("call prepare() or fit() before evaluate()")
        prep, ctx = self._prep, self.ctx
        if dataset is None:
            x, y = prep.x_test, prep.y_test
        else:
            x = torch.from_numpy(self._model_input(dataset.x, prep.layout, prep.normalizer))
            y = torch.from_numpy(self._targets(dataset.y, prep.loss))
        module = self.module
        if ctx.distributed:
            # BatchNorm running statistics drift apart per worker in training; use rank 0's,
            # which are the ones written to the exported model
            import torch.distributed as dist

            for name, buf in module.named_buffers():
                if name in module.param_ir_names:
                    dist.broadcast(buf.data, src=0)
        was_training = module.training
        module.eval()
        # worker r evaluates samples r, r + W, r + 2W, ... (no padding, every sample once)
        idx_all = torch.arange(ctx.rank, len(y), ctx.world_size, device=x.device)
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for idx in idx_all.split(batch_size):
                xb = x.index_select(0, idx).to(ctx.device)
                yb = y.index_select(0, idx).to(ctx.device)
                out = self._forward(module, xb)
                loss_sum += float(prep.loss(out, yb, prep.graph.kind)) * len(idx)
                if prep.loss.classification:
                    correct += int((prep.loss.predictions(out, yb) == yb).sum())
        module.train(was_training)
        loss_sum, correct, n = ctx.all_reduce_sum([loss_sum, float(correct), float(len(idx_all))])
        result = {"loss": loss_sum / max(n, 1)}
        if prep.loss.classification:
            result["accuracy"] = correct / max(n, 1)
        return result

    # ------------------------------------------------------------------------- checkpoints
    def _fingerprint(self) -> dict[str, Any]:
        prep = self._prep
        return {
            "parameters": {k: list(v.shape) for k, v in self.module.state_dict().items()},
            "train_samples": len(prep.y_train),
            "sample_shape": list(prep.splits.train.sample_shape),
        }

    def _save_checkpoint(self, ckpt_dir: Path, epoch: int, optimizer: Any, scheduler: Any) -> None:
        torch = self.torch
        ctx = self.ctx
        rng = [torch.get_rng_state()]
        if ctx.distributed:
            import torch.distributed as dist

            rng = [None] * ctx.world_size
            dist.all_gather_object(rng, torch.get_rng_state())
        cuda_rng = torch.cuda.get_rng_state(ctx.device) if ctx.device.startswith("cuda") else None
        if ctx.is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            state = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "module": self.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "history": self.history,
                "rng": rng,
                "cuda_rng": cuda_rng,
                "config": self.config.to_dict(),
                "fingerprint": self._fingerprint(),
                "normalizer": self._prep.normalizer.to_dict(),
            }
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write_bytes(ckpt_dir / f"epoch-{epoch:03d}.pt", buf.getvalue())
            for old in list_checkpoints(ckpt_dir)[: -max(1, self.config.keep_checkpoints)]:
                old.unlink(missing_ok=True)
        ctx.barrier()

    def _resume(self, resume: bool | str | os.PathLike[str], ckpt_dir: Path | None, optimizer: Any,
                scheduler: Any) -> int:
        torch = self.torch
        if resume is True:
            if ckpt_dir is None:
                raise InvalidInputError("resume needs a checkpoint directory")
            found = list_checkpoints(ckpt_dir)
            if not found:
                raise InvalidInputError(f"{ckpt_dir}: no checkpoint (epoch-NNN.pt) to resume from")
            path = found[-1]
        else:
            path = Path(resume)
            if not path.is_file():
                raise InvalidInputError(f"{path}: no such checkpoint file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises pickle/zip/runtime errors
            raise InvalidInputError(f"{path}: not a readable portanet checkpoint ({type(exc).__name__})") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInputError(f"{path}: not a portanet checkpoint")
        old = state["config"]
        now = self.config.to_dict()
        for key in TrainConfig.RESUME_KEYS:
            if old.get(key) != now.get(key):
                raise InvalidInputError(
                    f"{path}: checkpoint was made with {key}={old.get(key)!r}, this run has {key}={now.get(key)!r}"
                )
        if state["fingerprint"] != self._fingerprint():
            raise InvalidInputError(f"{path}: checkpoint belongs to a different model or data set")
        self.module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        torch.set_rng_state(rng[self.ctx.rank] if len(rng) == self.ctx.world_size else rng[0])
        if state.get("cuda_rng") is not None and self.ctx.device.startswith("cuda"):
            torch.cuda.set_rng_state(state["cuda_rng"], self.ctx.device)
        self.history = list(state["history"])
        self.resumed_from = str(path)
        log.info("resumed from %s (epoch %d)", path, state["epoch"])
        return int(state["epoch"])

    # ------------------------------------------------------------------------------ output
    def final_metrics(self) -> dict[str, Any]:
        return dict(self.history[-1]) if self.history else {}

    def export(self) -> ir.Model:
        """Write the trained weights back into the model given to the Trainer and return it.

        The model also records the run under the ``portanet.training`` metadata key
        (normalisation to apply to inputs, epochs, final metrics).
        """
        if self.module is None or self._prep is None:
            raise InvalidInputError("nothing trained yet: call fit() first")
        from portanet.runtime.torch_backend import write_back

        write_back(self.module, self.model)
        set_json(self.model, TRAINING_KEY, self.record())
        return self.model

    def record(self) -> dict[str, Any]:
        """The training record stored in the exported model's metadata."""
        prep = self._prep
        return {
            "epochs": len(self.history),
            "loss": prep.loss_name,
            "optimizer": self.config.optimizer,
            "lr": self.config.lr if self.config.lr is not None else default_lr(self.config.optimizer),
            "data": prep.splits.path,
            "input_layout": prep.layout.rule,
            "normalization": prep.normalizer.to_dict(),
            "frozen": self._frozen,
            "final": self.final_metrics(),
        }

    def summary(self) -> dict[str, Any]:
        """The JSON log of the run: configuration, data, model, per-epoch history, final metrics."""
        from portanet import __version__

        prep, ctx = self._prep, self.ctx
        return {
            "portanet_version": __version__,
            "torch_version": self.torch.__version__,
            "started": self._started,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": self.config.to_dict(),
            "resumed_from": self.resumed_from,
            "device": ctx.device if ctx else self.config.device,
            "world_size": ctx.world_size if ctx else 1,
            "data": {
                "path": prep.splits.path,
                "format": prep.splits.format,
                "train_samples": len(prep.splits.train),
                "test_samples": len(prep.splits.test),
                "sample_shape": list(prep.splits.train.sample_shape),
                "model_input_shape": list(prep.layout.model_shape),
                "layout": prep.layout.rule,
                "normalization": prep.normalizer.to_dict(),
            },
            "training_output": {"output": prep.graph.original_output, "trained_value": prep.graph.output,
                                "kind": prep.graph.kind, "loss": prep.loss_name},
            "parameters": {"trainable": self._trainable, "frozen": self._frozen_count,
                           "frozen_tensors": self._frozen},
            "history": self.history,
            "final": self.final_metrics(),
        }

    def write_log(self, path: str | os.PathLike[str]) -> Path:
        """Write ``summary()`` as JSON (atomically)."""
        return atomic_write_bytes(path, (json.dumps(self.summary(), indent=2) + "\n").encode())

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG of loss and accuracy per epoch (training and test)."""
        return plot_history(self.history, path)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """``epoch-NNN.pt`` files in ``directory``, oldest epoch first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def plot_history(history: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Loss and accuracy curves (train and test per epoch) as a PNG, written atomically."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    has_acc = any("train_accuracy" in h for h in history)
    fig = Figure(figsize=(10 if has_acc else 5, 4), dpi=100)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    panels = [("loss", axes[0])] + ([("accuracy", axes[1])] if has_acc else [])
    for metric, ax in panels:
        for split, style in (("train", "-o"), ("test", "-s")):
            ys = [h.get(f"{split}_{metric}") for h in history]
            if any(v is not None for v in ys):
                ax.plot(epochs, [np.nan if v is None else v for v in ys], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------ file-level runs
def train_files(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None,
    *,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool | str | os.PathLike[str] = False,
    log_path: str | os.PathLike[str] | None = None,
    plot_path: str | os.PathLike[str] | None = None,
    opset: int | None = None,
    callback: Callback | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Load ``model_path`` (.onnx), train on ``data`` and (rank 0) save the trained model.

    This is what ``portanet train`` runs in every worker. ``dry_run`` stops after
    ``prepare()`` (used to validate inputs before starting worker processes). Returns the run
    summary (``Trainer.summary()``) with the written paths under ``"outputs"``.
    """
    from portanet.converters.onnx.importer import add_self_provenance
    from portanet.ir.io import load_onnx, save_onnx

    model = load_onnx(model_path)
    add_self_provenance(model)  # an ONNX node without provenance is its own source layer (for --freeze)
    trainer = Trainer(model, config)
    try:
        trainer.prepare(data)
        if dry_run:
            return {}
        trainer.fit(checkpoint_dir=checkpoint_dir, resume=resume, callback=callback)
        summary = trainer.summary()
        outputs: dict[str, str] = {}
        if trainer.ctx.is_main:
            trained = trainer.export()
            if output is not None:
                outputs["model"] = str(save_onnx(trained, output, opset=opset))
            if log_path is not None:
                outputs["log"] = str(trainer.write_log(log_path))
            if plot_path is not None and trainer.history:
                outputs["plot"] = str(trainer.plot(plot_path))
        summary["outputs"] = outputs
        trainer.ctx.barrier()
        return summary
    finally:
        if trainer.ctx is not None:
            trainer.ctx.close()


__all__ = [
    "CHECKPOINT_FORMAT",
    "TRAINING_KEY",
    "TrainConfig",
    "TrainEvent",
    "Trainer",
    "list_checkpoints",
    "plot_history",
    "train_files",
]
