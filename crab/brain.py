"""CrabBrain: training and evaluation of Crab with SpeechBrain."""

import csv
import json
import logging
import math
import os
import re
import time

import speechbrain as sb
import torch
import yaml
from speechbrain.utils.distributed import if_main_process, is_distributed_initialized

from crab import evalrecord
from crab.checkpointing import RandomState
from crab.cli import UserError
from crab.data import SAMPLE_RATE
from crab.distributed import world_size
from crab.encoders import lengths_to_mask, relative_to_absolute
from crab.features import BRANCHES, cached_states
from crab.fileio import commit, make_dirs, stage, text_writer
from crab.losses import leg_losses, total_loss
from crab.metrics import METRICS, compute_scores
from crab.model import NonFiniteOutputError, non_finite_rows
from crab.report import EVALUATED_CHECKPOINT
from crab.signals import DeferredSigterm, Terminated

logger = logging.getLogger(__name__)


def _unwrap(module):
    """The module inside a DistributedDataParallel wrapper, if any."""
    return module.module if hasattr(module, "module") else module


FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)


def fast_optimizer_options(opt_class, device):
    """``{"fused": True}`` for torch's Adam or AdamW (``opt_class``, or the callable a
    yaml ``!name:`` makes of it) on a CUDA device, unless the yaml sets ``fused`` or
    ``foreach`` itself: the update of many parameter tensors in one kernel launch
    instead of the dozen launches of torch's CUDA default (the ``foreach`` form).
    Elsewhere nothing: torch's default, so CPU runs are unchanged."""
    keywords = getattr(opt_class, "keywords", {}) or {}
    func = getattr(opt_class, "func", opt_class)
    cuda = torch.device(device).type == "cuda"
    if cuda and func in FUSED_OPTIMIZERS and not {"fused", "foreach"} & set(keywords):
        return {"fused": True}
    return {}


UPDATE_KERNEL_KEYS = ("fused", "foreach")


def keep_update_kernel(optimizer, state_dict):
    """``Optimizer.load_state_dict`` pre-hook: the checkpoint's parameter groups with this
    optimizer's ``fused`` and ``foreach``, which ``fast_optimizer_options`` chose for this
    device, in place of those of the machine that saved it. A run saved on CPU and resumed
    on CUDA would otherwise step unfused, and under fp16 fail at its first step (the
    gradient scaler hands its inf check to an optimizer built fused, which then runs
    torch's unfused update); one saved on CUDA would step fused on CPU."""
    current = optimizer.param_groups
    if len(current) != len(state_dict["param_groups"]):
        return None  # torch's own error names the mismatch
    groups = [
        {**saved, **{k: group[k] for k in UPDATE_KERNEL_KEYS if k in group}}
        for saved, group in zip(state_dict["param_groups"], current, strict=True)
    ]
    return {**state_dict, "param_groups": groups}


def _model_inputs(batch, device):
    """Crab's inputs from a loader's batch (moved to ``device``, in place): waveforms (None
    without audio), texts, cached states. The relative lengths stay on the host: the audio's
    as an array (DDP moves a tensor argument to the device), the cached states' in their
    masks; the encoders and the GRU's packing read them without waiting for the device
    (``crab.masks``)."""
    audio_lens = batch.sig.lengths if hasattr(batch, "sig") else None
    state_lens = {b: getattr(batch, f"{b}_states").lengths for b in BRANCHES if hasattr(batch, f"{b}_states")}
    batch = batch.to(device)
    wavs = None if audio_lens is None else batch.sig.data
    wav_lens = None if audio_lens is None else audio_lens.cpu().numpy()
    return wavs, wav_lens, batch.text, cached_states(batch, state_lens)


def _rows_to_keep(batch_size, seen, max_utterances):
    """How many rows of a batch the training-set statistics take: all of them, or those
    up to ``max_utterances`` utterances in all (``seen`` already taken), not the whole
    batch that holds the last one."""
    return batch_size if not max_utterances else max(0, min(batch_size, max_utterances - seen))


class NonFiniteLossError(FloatingPointError):
    """A training loss is NaN or infinite."""


def check_finite_losses(values, ids, epoch, step):
    """Raise ``NonFiniteLossError`` if a loss part in ``values`` (name -> float) is
    not finite, naming the parts, the epoch, the step and the batch's utterances."""
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        parts = ", ".join(f"{name}={value}" for name, value in bad.items())
        raise NonFiniteLossError(
            f"non-finite training loss ({parts}) at epoch {epoch}, step {step}, in the batch of "
            f"utterances {', '.join(ids)}; stopped before the optimizer step, so the saved "
            "checkpoints hold only finite updates"
        )


STAGE_NAMES = {sb.Stage.TRAIN: "training", sb.Stage.VALID: "validation", sb.Stage.TEST: "evaluation"}


class GPUMemoryError(UserError, RuntimeError):
    """A batch did not fit in the GPU's memory (torch's ``OutOfMemoryError``)."""


def out_of_memory_message(err, stage, epoch, step, batch, device, hparams):
    """What ran out of GPU memory (the stage, the batch and its padded audio, the device's
    memory and this process's peak) and what lowers the memory a step needs, in one line."""
    ids = list(batch.id)
    alone = len(ids) == 1
    shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
    what = f"a batch of one utterance, {ids[0]}" if alone else f"a batch of {len(ids)} utterance(s) ({shown})"
    if hasattr(batch, "sig"):
        seconds = batch.sig.data.shape[-1] / SAMPLE_RATE
        what += f", its audio {seconds:.1f} s long" if alone else f", audio padded to {seconds:.1f} s"
    asked = re.search(r"Tried to allocate [\d.]+ [KMGT]i?B", str(err))
    memory = f" (t{asked[0][1:]})" if asked else ""
    if torch.device(device).type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        name = torch.cuda.get_device_name(device)
        memory += f": {name} has {total:.1f} GiB, this process's tensors peaked at {peak:.1f} GiB"
    where = f"{STAGE_NAMES.get(stage, stage)}: out of GPU memory at epoch {epoch}, step {step}"
    return f"{where}, on {what}{memory}. Lower the memory it needs: {_memory_advice(stage, hparams, alone)}"


def _memory_advice(stage, hparams, alone):
    """What lowers the memory of a step of ``stage``; ``alone``: its batch is one utterance, which
    no smaller batch (``batch_size``, ``max_batch_length``) helps."""
    if stage == sb.Stage.TEST:
        if alone:
            return "--eval_precision=bf16 (the batch is one utterance: a smaller --batch_size cannot help)"
        return (
            "a smaller --batch_size (an evaluation may change it: a prediction does not depend on its "
            "batch), or --eval_precision=bf16"
        )
    if stage == sb.Stage.VALID:  # no gradients: only its batch and precision matter
        return (
            "--eval_precision=bf16 (validation in bf16; the run resumes with it), or a shorter "
            f"max_duration (now {hparams.get('max_duration')} s) in a new run"
        )
    advice = [
        "--gradient_checkpointing=true (the encoders recompute their activations in the backward pass: "
        "the same gradients; the run resumes with it)"
    ]
    if not alone:
        advice += _smaller_batches(hparams)
    cut = ": every utterance's audio, this one's too, is cut there" if alone else ""
    advice.append(f"a shorter max_duration (now {hparams.get('max_duration')} s{cut}) in a new run")
    advice.append("--precision=bf16")
    return "; or ".join(advice) + _smaller_batch_note(hparams, alone)


def _smaller_batches(hparams):
    """The advice, if any, of a training with smaller batches than ``hparams``'s."""
    if hparams.get("dynamic_batching"):
        lower = f"a new run with a lower max_batch_length (now {hparams['max_batch_length']} s)"
        if _legs_train_on_the_batch(hparams):  # MPCL and SupCon are 0 on a batch of one
            lower += (
                ": more of the longest utterances then come alone, and a batch of one utterance gives "
                "the contrastive legs (MLCS) nothing"
            )
        return [lower]
    if int(hparams.get("batch_size", 1)) > 1 and not _legs_need_the_batch(hparams):
        size, factor = int(hparams["batch_size"]), int(hparams.get("grad_accumulation_factor", 1))
        return [
            f"a new run with --batch_size={size // 2} --grad_accumulation_factor={factor * 2} (an optimizer "
            "batch as large; the contrastive losses compare fewer utterances at once)"
        ]
    return []


def _smaller_batch_note(hparams, alone):
    """Why the advice says nothing of smaller batches, where that is not obvious."""
    if alone:
        return ". Not a smaller batch (--batch_size, max_batch_length): this one is a single utterance"
    if _legs_need_the_batch(hparams):
        return (
            ". Not --batch_size=1: a batch of one utterance never holds two of one class, which the "
            "contrastive legs (MLCS) need, so they would add nothing to the cross-entropy"
        )
    return ""


def _legs_train_on_the_batch(hparams):
    """Whether contrastive legs train on each process's batch alone (not gathered over processes)."""
    return bool(hparams.get("leg_names") and hparams.get("alpha") and not hparams.get("gather_contrastive"))


def _legs_need_the_batch(hparams):
    """Whether halving the batch_size would leave batches of one utterance to contrastive legs
    that train (unless they gather the batches of every process)."""
    batch_size = int(hparams.get("batch_size", 1))
    return _legs_train_on_the_batch(hparams) and not hparams.get("dynamic_batching") and batch_size // 2 == 1


def check_finite_outputs(bad, ids, stage, epoch, step):
    """Raise ``NonFiniteOutputError`` naming the utterances ``bad`` (indices of the
    batch's rows of scores holding a NaN or an infinity, ``crab.model.non_finite_rows``):
    in training before the optimizer step, in validation and evaluation instead of a
    prediction (``argmax`` of a NaN row is class 0, which may even count as correct
    and would steer checkpoint selection)."""
    if bad:
        names = ", ".join(f"'{ids[i]}'" for i in bad)
        raise NonFiniteOutputError(
            f"{STAGE_NAMES.get(stage, stage)}: non-finite model output (NaN or infinite scores) for "
            f"utterance(s) {names} at epoch {epoch}, step {step}; no prediction was made. Check the "
            "audio and transcript of these utterances, or the model (a diverged checkpoint)"
        )


OPTIMIZER_BATCH = "optimizer_batch"  # brain.ckpt: the processes and accumulation of an optimizer step


def optimizer_batch_change(saved, processes, factor):
    """The warning, or None, for a training of ``processes`` x accumulation ``factor`` that resumes
    a checkpoint whose optimizer step averaged ``saved`` (``{"processes", "grad_accumulation_factor"}``)."""
    then = saved["processes"] * saved["grad_accumulation_factor"]
    if then == processes * factor:
        return None
    keep = (
        f"--grad_accumulation_factor={then // processes} keeps it (the recipe: in --train_opts)"
        if then % processes == 0
        else f"no --grad_accumulation_factor keeps it on {processes} process(es)"
    )
    return (
        f"Resuming a checkpoint trained with optimizer steps over {saved['processes']} process(es) x "
        f"accumulation {saved['grad_accumulation_factor']} batches, now over {processes} x {factor}: "
        f"each step averages {processes * factor / then:g} times as many utterances as before; {keep}"
    )


@sb.utils.checkpoints.register_checkpoint_hooks
class CrabBrain(sb.Brain):
    """Trains Crab with weighted CE plus alpha * mean of the leg losses.

    Expected hparams: ``classes``, ``alpha``, ``lr``, ``encoder_lr``,
    ``opt_class`` (partial taking params and lr), ``scheduler_class`` (partial
    taking an optimizer), ``leg_loss``, ``ckpt_metric``, ``train_logger``;
    modules ``model`` (``crab.model.Crab``), ``legs`` (``crab.legs.SupervisionLegs``)
    and ``wce`` (``crab.losses.WeightedCrossEntropy``).

    Arguments
    ---------
    modules, opt_class, hparams, run_opts, checkpointer
        As ``speechbrain.core.Brain``; ``opt_class`` is unused (``init_optimizers``
        builds one optimizer per parameter group from ``hparams.opt_class``).

    Returns
    -------
    ``compute_forward`` returns ``(logits, leg outputs)`` (no leg outputs outside
    training); ``compute_objectives`` the loss WCE + alpha * mean of the leg losses.

    Example
    -------
    The loss of one training batch of a tiny speech-only Crab (``crab.bin.train`` builds the
    brain from a recipe's yaml and calls ``fit``):

    >>> import os, torch, crab
    >>> import speechbrain as sb
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> from crab.encoders import SpeechEncoder
    >>> from crab.legs import SupervisionLegs
    >>> from crab.losses import ContrastiveLoss, WeightedCrossEntropy
    >>> from crab.model import Crab
    >>> wavlm = os.path.join(os.path.dirname(crab.__file__), "..", "egs", "mini", "conf", "wavlm_tiny")
    >>> _ = torch.manual_seed(0)
    >>> model = Crab(4, lambda: SpeechEncoder(wavlm, pretrained=False), modality="speech", hidden_dim=8,
    ...              bottleneck_dim=8)
    >>> modules = {"model": model, "legs": SupervisionLegs(model.tap_dims, output_dim=8),
    ...            "wce": WeightedCrossEntropy(num_classes=4)}
    >>> hparams = {"classes": ["angry", "happy", "neutral", "sad"], "alpha": 2.0,
    ...            "leg_loss": ContrastiveLoss("mpcl"), "epoch_counter": sb.utils.epoch_loop.EpochCounter(1)}
    >>> brain = CrabBrain(modules=modules, hparams=hparams, run_opts={"device": "cpu"})
    >>> batch = PaddedBatch([{"id": f"utt{i}", "sig": torch.randn(8000 - 1000 * i), "text": "",
    ...                       "emo_encoded": torch.tensor([i % 2])} for i in range(4)])
    >>> logits, legs = brain.compute_forward(batch, sb.Stage.TRAIN)
    >>> logits.shape, sorted(legs)
    (torch.Size([4, 4]), ['fusion', 'speech_pooled', 'speech_unimodal'])
    >>> loss = brain.compute_objectives((logits, legs), batch, sb.Stage.TRAIN)
    >>> parts = brain._loss_parts  # this epoch's sums: WCE and each leg's MPCL
    >>> sorted(parts)
    ['leg_fusion', 'leg_speech_pooled', 'leg_speech_unimodal', 'wce']
    >>> legs_mean = (parts["leg_fusion"] + parts["leg_speech_pooled"] + parts["leg_speech_unimodal"]) / 3
    >>> abs(loss.item() - (parts["wce"] + 2.0 * legs_mean)) < 1e-5
    True
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.max_grad_norm is None or self.max_grad_norm <= 0:  # max_grad_norm: null, no clipping
            self.max_grad_norm = float("inf")  # SpeechBrain clips every step: to an infinite norm, a no-op
        self._loss_parts, self._loss_parts_count = {}, 0
        self._saved_step = None  # brain.ckpt's optimizer_batch, once a checkpoint is loaded
        self.random_state = RandomState()
        self._sigterm = DeferredSigterm()
        self._stop_after_save = False
        if self.checkpointer is not None:
            # optional: checkpoints written before it existed still load
            self.checkpointer.add_recoverable("random_state", self.random_state, optional_load=True)

    def forward_model(self, batch):
        """Crab's ``(logits, taps)`` on a batch of waveforms or cached encoder states."""
        return self.modules.model(*_model_inputs(batch, self.device))

    @torch.no_grad()
    def fit_state_normalization(self, dataset, loader_kwargs, max_utterances=None):
        """Statistics of the speech encoder's ``waveform_norm`` (``waveform_normalization:
        global``), then of every encoder's ``state_norm`` (``normalize_states``, on the
        normalised waveforms) from ``dataset`` (its first ``max_utterances``, in order),
        once before training."""
        model = _unwrap(self.modules.model)
        kwargs = {k: v for k, v in loader_kwargs.items() if k not in ("shuffle", "batch_sampler")}
        speech = model.speech_encoder
        if speech is not None and speech.waveform_norm is not None:
            self._fit_waveform_normalization(speech.waveform_norm, dataset, kwargs, max_utterances)
        norms = {b: model.encoders[b].state_norm for b in model.branches}
        norms = {b: n for b, n in norms.items() if n is not None}
        if not norms:
            return
        loader = sb.dataio.dataloader.make_dataloader(dataset, **kwargs)
        was_training, seen = model.training, 0
        model.eval()
        for batch in loader:
            states = model.encoder_states(*_model_inputs(batch, self.device))
            keep = _rows_to_keep(len(batch.id), seen, max_utterances)
            for branch, norm in norms.items():
                hidden, mask = states[branch]
                norm.accumulate(model.encoders[branch].readout(hidden, mask)[:keep], mask[:keep])
            seen += keep
            if max_utterances and seen >= max_utterances:
                break
        for norm in norms.values():
            norm.finish()
        model.train(was_training)
        logger.info("Encoder state statistics (%s) from %d training utterances", ", ".join(norms), seen)

    def _fit_waveform_normalization(self, norm, dataset, loader_kwargs, max_utterances):
        """One mean and standard deviation over every real sample of the training
        waveforms (as training reads them: cut at ``max_duration``)."""
        seen = 0
        for batch in sb.dataio.dataloader.make_dataloader(dataset, **loader_kwargs):
            if not hasattr(batch, "sig"):
                raise ValueError(
                    "waveform_normalization: global needs the training audio; "
                    "a feature cache holds encoder states only"
                )
            wavs, wav_lens = batch.sig
            keep = _rows_to_keep(len(batch.id), seen, max_utterances)
            lengths = relative_to_absolute(wav_lens, wavs.shape[1])
            norm.accumulate(wavs[:keep], lengths_to_mask(lengths, wavs.shape[1])[:keep])
            seen += keep
            if max_utterances and seen >= max_utterances:
                break
        norm.finish()
        logger.info(
            "Waveform mean %.6g and std %.6g from %d training utterances",
            float(norm.mean),
            float(norm.std),
            seen,
        )

    def fit_batch(self, batch):
        try:
            return super().fit_batch(batch)
        except torch.OutOfMemoryError as err:
            raise self._out_of_memory(err, batch, sb.Stage.TRAIN) from err

    def evaluate_batch(self, batch, stage):
        try:
            return super().evaluate_batch(batch, stage)
        except torch.OutOfMemoryError as err:
            raise self._out_of_memory(err, batch, stage) from err

    def _out_of_memory(self, err, batch, stage):
        epoch = self.hparams.epoch_counter.current
        # grad_accumulation_factor is a run option too: the brain's value is the one in use
        settings = {**vars(self.hparams), "grad_accumulation_factor": self.grad_accumulation_factor}
        message = out_of_memory_message(err, stage, epoch, self.step, batch, self.device, settings)
        return GPUMemoryError(message)

    def compute_forward(self, batch, stage):
        logits, taps = self.forward_model(batch)
        legs = self.modules.legs
        use_legs = stage == sb.Stage.TRAIN and len(_unwrap(legs).legs) > 0
        return logits, legs(taps) if use_legs else {}

    def compute_objectives(self, predictions, batch, stage):
        logits, leg_outputs = predictions
        epoch = self.hparams.epoch_counter.current
        targets = batch.emo_encoded.data.squeeze(1)
        ce = self.modules.wce(logits, targets)
        by_leg = leg_losses(self.hparams.leg_loss, leg_outputs, targets)
        loss = total_loss(ce, list(by_leg.values()), self.hparams.alpha)
        if stage == sb.Stage.TRAIN:
            parts = {"wce": ce, **{f"leg_{n}": v for n, v in by_leg.items()}}
            # the step's checks and sums in one copy to the host (each .item() waits for the device)
            sums = torch.stack([v.detach().float() for v in parts.values()])
            values = torch.cat([sums, torch.isfinite(logits.detach()).all(dim=-1)]).tolist()
            bad_rows = [i for i, ok in enumerate(values[len(parts) :]) if not ok]
            check_finite_outputs(bad_rows, batch.id, stage, epoch, self.step)
            self._add_parts(batch, dict(zip(parts, values[: len(parts)], strict=True)))
        else:
            check_finite_outputs(non_finite_rows(logits), batch.id, stage, epoch, self.step)
            self._predictions.append(
                (batch.id, targets.cpu(), torch.softmax(logits.float(), dim=-1).detach().cpu())
            )
        return loss

    def check_loss_isfinite(self, loss):
        """Nothing: ``compute_objectives`` has stopped training on a non-finite loss part, from
        the values it copied to the host. SpeechBrain's check would read the loss on the host
        once more, a second wait for the device before the backward pass."""

    def _add_parts(self, batch, values):
        """Add the batch's loss parts (name -> float) to the epoch's sums; a non-finite
        one stops training here, before ``backward()`` and the optimizer step."""
        check_finite_losses(values, batch.id, self.hparams.epoch_counter.current, self.step)
        for name, value in values.items():
            self._loss_parts[name] = self._loss_parts.get(name, 0.0) + value
        self._loss_parts_count += 1

    def on_stage_start(self, stage, epoch=None):
        self._predictions = []
        if stage != sb.Stage.TRAIN or self.step == 0:  # step > 0: resumed mid-epoch, sums restored
            self._loss_parts, self._loss_parts_count = {}, 0

    def _fit_train(self, train_set, epoch, enable):
        """SpeechBrain's training epoch, in which SIGTERM (a scheduler's time limit or
        ``scancel``) does not stop the process at once: it ends at the next optimizer step,
        after saving a checkpoint there (``_should_save_intra_epoch_ckpt``)."""
        with self._sigterm:
            super()._fit_train(train_set, epoch, enable)
        if self._sigterm.requested:  # after the epoch's last check: nothing saved since it
            raise Terminated

    def _should_save_intra_epoch_ckpt(self, last_ckpt_time, steps_since_ckpt):
        """SpeechBrain's choice of a checkpoint inside the epoch (every ``ckpt_interval_minutes``
        or ``ckpt_interval_steps``), or SIGTERM received, taken only where an optimizer step has
        just been made: the gradients summed over part of an accumulation are in no checkpoint,
        so a run resumed from one saved there would step on fewer batches than it should. Under
        DDP the main process's clock decides, and a SIGTERM received by any process stops all."""
        if self.step % self.grad_accumulation_factor:
            return False
        minutes = (time.time() - last_ckpt_time) / 60
        due = 0 < self.ckpt_interval_minutes < minutes or 0 < self.ckpt_interval_steps <= steps_since_ckpt
        decision = [float(due and if_main_process()), float(self._sigterm.requested)]
        if is_distributed_initialized():
            flags = torch.tensor(decision, device=self.device)
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            decision = flags.tolist()
        due, stop = (bool(flag) for flag in decision)
        if stop and self.checkpointer is None:
            raise Terminated
        self._stop_after_save = stop
        return self.checkpointer is not None and (due or stop)

    def _save_intra_epoch_ckpt(self):
        super()._save_intra_epoch_ckpt()
        if self._stop_after_save:
            if if_main_process():
                logger.info(
                    "SIGTERM: saved a checkpoint at epoch %d, step %d in %s; the same command resumes there",
                    self.hparams.epoch_counter.current,
                    self.step,
                    self.checkpointer.checkpoints_dir,
                )
            raise Terminated

    def on_fit_batch_start(self, batch, should_step):
        self.random_state.restore_pending()  # after resuming from an intra-epoch checkpoint

    @sb.utils.checkpoints.mark_as_saver
    def _save(self, path):
        """Brain's counters, then the epoch's loss-part sums (for the log of a resumed epoch) and
        what an optimizer step averaged over (processes and accumulation; ``batch_size`` is the
        run's setting, which a resumed training checks)."""
        super()._save(path)
        with open(path, "a", encoding="utf-8") as f:
            sums = {"loss_parts": self._loss_parts, "loss_parts_count": self._loss_parts_count}
            step = {"processes": world_size(), "grad_accumulation_factor": self.grad_accumulation_factor}
            yaml.dump({**sums, OPTIMIZER_BATCH: step}, f, sort_keys=False)

    @sb.utils.checkpoints.mark_as_loader
    def _recover(self, path, end_of_epoch):
        super()._recover(path, end_of_epoch)
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
        self._loss_parts = saved.get("loss_parts", {})
        self._loss_parts_count = saved.get("loss_parts_count", 0)
        self._saved_step = saved.get(OPTIMIZER_BATCH)  # None: a checkpoint of an older release

    def on_fit_start(self):
        """SpeechBrain's (the latest checkpoint loaded), then a warning where the optimizer step of
        the training it resumes averaged over another number of batches: DDP on another number of
        processes (a node with other GPUs), or another ``--grad_accumulation_factor``."""
        self._saved_step = None
        super().on_fit_start()
        if self._saved_step:
            warning = optimizer_batch_change(self._saved_step, world_size(), self.grad_accumulation_factor)
            if warning and if_main_process():
                logger.warning(warning)

    def init_optimizers(self):
        """AdamW per parameter group: speech encoder, text encoder (at
        ``encoder_lr``), and the head with the legs (at ``lr``); a cosine
        schedule per epoch for each, annealed to ``encoder_lr_floor`` and
        ``lr_floor`` (their ``eta_min``; 0, the default, passes none)."""
        model = _unwrap(self.modules.model)
        head = model.head_parameters() + list(self.modules.legs.parameters())
        groups = {
            "speech_encoder": (model.encoder_parameters("speech"), self.hparams.encoder_lr),
            "text_encoder": (model.encoder_parameters("text"), self.hparams.encoder_lr),
            "head": (head, self.hparams.lr),
        }
        hparams = vars(self.hparams)  # runs configured before the floors existed have neither key
        encoder_floor = hparams.get("encoder_lr_floor") or 0.0
        floors = {
            "speech_encoder": encoder_floor,
            "text_encoder": encoder_floor,
            "head": hparams.get("lr_floor") or 0.0,
        }
        self.optimizers_dict, self.schedulers = {}, {}
        for name, (params, lr) in groups.items():
            if not params:  # a frozen or absent encoder
                continue
            fast = fast_optimizer_options(self.hparams.opt_class, self.device)  # fused on CUDA
            optimizer = self.hparams.opt_class(params, lr=lr, **fast)
            optimizer.register_load_state_dict_pre_hook(keep_update_kernel)  # resumed elsewhere
            floor = {"eta_min": floors[name]} if floors[name] else {}
            scheduler = self.hparams.scheduler_class(optimizer, **floor)
            self.optimizers_dict[name], self.schedulers[name] = optimizer, scheduler
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable(f"optimizer_{name}", optimizer)
                self.checkpointer.add_recoverable(f"scheduler_{name}", scheduler)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            count = max(self._loss_parts_count, 1)
            self.train_stats = {"loss": stage_loss}
            self.train_stats.update({k: v / count for k, v in self._loss_parts.items()})
            self._check_legs_trained(epoch)
            return
        ids, targets, probs = self._gather_predictions()
        stats = {"loss": stage_loss}
        stats.update(compute_scores(targets, probs.argmax(dim=1).tolist(), len(self.hparams.classes)))
        if stage == sb.Stage.VALID:
            lrs = {f"lr_{n}": opt.param_groups[0]["lr"] for n, opt in self.optimizers_dict.items()}
            for scheduler in self.schedulers.values():
                scheduler.step()
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **lrs},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={**{k: stats[k] for k in METRICS}, "epoch": epoch},  # "epoch" keeps the last
                max_keys=[self.hparams.ckpt_metric],
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            self._write_eval(ids, targets, probs, stats)

    def _check_legs_trained(self, epoch):
        """A warning when every leg loss of the epoch summed to exactly 0: MPCL (and SupCon) is 0
        for a batch in which no utterance shares its class with another (a batch of one, or of
        distinct classes), so the legs got no gradient and the loss was weighted CE alone."""
        legs = [v for k, v in self._loss_parts.items() if k.startswith("leg_")]
        if legs and not any(legs) and self.hparams.alpha and if_main_process():
            hparams = vars(self.hparams)
            batches = (
                "dynamic batches"
                if hparams.get("dynamic_batching")
                else f"batch_size {hparams.get('batch_size')}"
            )
            logger.warning(
                "Epoch %s: every contrastive leg loss was 0: no training batch held two utterances of one "
                "class (%s), so MLCS added nothing to the cross-entropy. Give the legs pairs with larger "
                "batches (a smaller grad_accumulation_factor keeps the optimizer batch), or say that this is "
                "cross-entropy alone (--leg_names=[], the ce_only ablation)",
                epoch,
                batches,
            )

    def _gather_predictions(self):
        ids = [utt for batch_ids, _, _ in self._predictions for utt in batch_ids]
        targets = torch.cat([t for _, t, _ in self._predictions]).tolist()
        probs = torch.cat([p for _, _, p in self._predictions])
        return ids, targets, probs

    def on_evaluate_start(self, max_key=None, min_key=None):
        """As SpeechBrain's (the best checkpoint on ``max_key`` / ``min_key`` loaded), noting
        which one: ``_write_eval`` records it beside the scores."""
        found = self.checkpointer and self.checkpointer.recover_if_possible(max_key=max_key, min_key=min_key)
        self._evaluated = os.path.basename(found.path) if found else "none"

    def evaluate(
        self,
        test_set,
        max_key=None,
        min_key=None,
        progressbar=None,
        test_loader_kwargs=None,
        eval_folder=None,
    ):
        """``speechbrain.core.Brain.evaluate``, writing ``predictions.csv`` and ``scores.json``
        to ``eval_folder`` (default: ``self.eval_folder()``, from the hparams)."""
        self._eval_folder = eval_folder
        try:
            return super().evaluate(
                test_set,
                max_key=max_key,
                min_key=min_key,
                progressbar=progressbar,
                test_loader_kwargs=test_loader_kwargs or {},
            )
        finally:
            self._eval_folder = None

    def eval_folder(self):
        """Where evaluation writes: ``evaluate``'s ``eval_folder``, else the hparams'
        ``eval_folder``, else ``<output_folder>/eval_<eval_name>`` (``eval_name`` default ``test``)."""
        hparams = vars(self.hparams)
        folder = getattr(self, "_eval_folder", None) or hparams.get("eval_folder")
        if folder:
            return str(folder)
        if not hparams.get("output_folder"):
            raise ValueError(
                "CrabBrain.evaluate: no folder for the predictions: give evaluate(eval_folder=...) "
                "or an eval_folder or output_folder hyperparameter"
            )
        return os.path.join(hparams["output_folder"], f"eval_{hparams.get('eval_name') or 'test'}")

    def _write_eval(self, ids, targets, probs, stats):
        """Write ``predictions.csv``, ``scores.json``, ``checkpoint.txt`` (the name of the
        checkpoint evaluated, or ``none``) and, with ``eval_inputs`` set (``crab.bin.evaluate``),
        their record (``crab.evalrecord``) to ``self.eval_folder()``, each whole
        (``crab.fileio``: a kill leaves the old ones; a cut predictions.csv would be scored
        as a smaller test set)."""
        classes = list(self.hparams.classes)
        eval_dir = self.eval_folder()
        make_dirs(eval_dir)
        # renamed last, after the outputs; an older record goes first (a kill between leaves none)
        evalrecord.forget(eval_dir, evalrecord.PREDICTIONS_RECORD)
        inputs = getattr(self, "eval_inputs", None)
        record = os.path.join(eval_dir, evalrecord.PREDICTIONS_RECORD)
        inputs_record = [(record, text_writer(json.dumps(inputs, indent=2)))] if inputs else []

        def predictions(path):
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "true", "predicted"] + [f"prob_{c}" for c in classes])
                for utt, target, p in zip(ids, targets, probs.tolist(), strict=True):
                    predicted = max(range(len(p)), key=p.__getitem__)
                    writer.writerow([utt, classes[target], classes[predicted]] + [f"{x:.6f}" for x in p])

        def scores(path):
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"num_utterances": len(ids), **{k: stats[k] for k in METRICS}}, f, indent=2)

        commit(
            stage(
                [
                    (os.path.join(eval_dir, "predictions.csv"), predictions),
                    (os.path.join(eval_dir, "scores.json"), scores),
                    (
                        os.path.join(eval_dir, EVALUATED_CHECKPOINT),
                        text_writer(getattr(self, "_evaluated", "none") + "\n"),
                    ),
                ]
                + inputs_record
            )
        )
        logger.info("Wrote predictions and scores to %s", eval_dir)
