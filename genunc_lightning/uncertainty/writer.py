"""ScoredSampleWriter: per-rank shards written atomically, a merged scores table, a manifest; resumable.

A predict run directory holds (the format, and its checked readers, are in ``run_directory``):

- ``manifest.json``: the run's identity (model, posterior and likelihood fingerprints, M, T, T',
  seeds), its hash ``run_id``, versions and world size. A re-run with another identity is refused
  before sampling.
- ``shards/shard-<first>-<last>-<uid>.safetensors``: one per batch and rank, written atomically:
  ``index``, ``seed``, ``class``, ``score.<name>`` and (optionally) ``sample`` and ``variance_map``,
  with the ``run_id`` of the run that wrote it.
- ``scores.csv``: every index exactly once, sorted: ``index,seed,class,<score columns>``; a prompt run
  (``PromptDataModule``) has ``index,seed,class,prompt,<score columns>``, ``class`` the prompt's
  position and ``prompt`` its text (CSV-quoted).
- ``prompts.json``: a prompt run's prompt list, in order.
- ``images/<index>.png`` when ``save_png`` is on (image samples only).

A re-run of the same command reads the shards, drops unreadable (e.g. truncated) ones and those of
another run, generates only the missing indices and rewrites the table (also when nothing is
missing, e.g. after a crash between the last shard and the table). A lock file (``.lock``, held by
rank 0 for the whole run) refuses a second run into the same directory while one is writing. A run
that fails before it has written any shard leaves the directory as it found it.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from genunc_lightning.data.predict import missing_indices
from genunc_lightning.io import atomic_path, save_safetensors_atomic, write_csv_atomic, write_text_atomic
from genunc_lightning.uncertainty.prediction import ScoredPrediction, check_prediction
from genunc_lightning.uncertainty.run_directory import (
    LOCK,
    MANIFEST,
    PROMPTS,
    RUN_FORMAT,
    SCORES,
    SHARD_FORMAT,
    TABLE_COLUMNS,
    RunDirectoryError,
    RunShards,
    first_missing,
    read_manifest,
    read_prompts,
    read_scores,
    read_shards,
    run_id,
)

__all__ = ["EVALUATION_COLUMNS", "RunDirectoryError", "ScoredSampleWriter", "check_score_names", "read_manifest",
           "read_scores", "read_shards"]  # fmt: skip

# Columns `genunc evaluate` adds to the table, and the names of its reference rows.
EVALUATION_COLUMNS = ("realism", "rarity", "random")
SCORE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")


def check_score_names(names: Sequence[str]) -> None:
    """Score names become table columns: distinct, plain (letters, digits, ``_``, ``-``) and not reserved.

    Raises:
        ValueError: a name is repeated, not plain, or one of ``TABLE_COLUMNS`` / ``EVALUATION_COLUMNS``.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"Score names must be distinct; got {list(names)}.")
    for name in names:
        if name in TABLE_COLUMNS or name in EVALUATION_COLUMNS:
            raise ValueError(
                f"Score name {name!r} is reserved (the table has {', '.join(TABLE_COLUMNS)}; evaluate adds "
                f"{', '.join(EVALUATION_COLUMNS)}): give the likelihood or baseline another name."
            )
        if not SCORE_NAME.fullmatch(name):
            raise ValueError(
                f"Score name {name!r} is not a plain name: use letters, digits, '_' and '-', starting with a letter."
            )


def _versions() -> dict[str, str]:
    import lightning

    from genunc_lightning import __version__

    return {"genunc_lightning": __version__, "torch": torch.__version__, "lightning": lightning.__version__}


class ScoredSampleWriter(BasePredictionWriter):
    """Writes ``GenerativeUncertaintyModule`` predictions into a resumable run directory.

    Args:
        output_dir: the run directory.
        save_samples: keep the decoded kept samples in the shards (needed by `genunc evaluate`).
        save_png: also write one PNG per image sample.
        replace_other_run: delete a run of another configuration found in ``output_dir`` and start
            afresh, instead of refusing (for directories a program owns, like the demo's).
    """

    def __init__(
        self,
        output_dir: str = "runs/predict",
        save_samples: bool = True,
        save_png: bool = False,
        replace_other_run: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.save_samples = save_samples
        self.save_png = save_png
        self.replace_other_run = replace_other_run
        self._warned_png = False

    # -- before sampling -------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Checks the directory against this run, finds finished indices, writes the manifest."""
        if stage != "predict":
            return
        identity = {
            "module": pl_module.manifest_entry() if hasattr(pl_module, "manifest_entry") else {},
            "data": trainer.datamodule.manifest_entry() if hasattr(trainer.datamodule, "manifest_entry") else {},
            "save_samples": self.save_samples,
        }
        identity = json.loads(json.dumps(identity, default=str))
        self._run_id = run_id(identity)
        self._rollback = None
        created = not self.output_dir.exists()
        self._acquire_lock(trainer)
        manifest_path = self.output_dir / MANIFEST
        other_run = ""
        previous_text = manifest_path.read_text() if manifest_path.is_file() else None
        # What a failure before the first shard restores: (directory created by this run, old manifest).
        self._rollback = (created, previous_text)
        if previous_text is not None:
            previous = read_manifest(self.output_dir)
            if previous.get("identity") != identity:
                diff = sorted(
                    k
                    for k in set(previous.get("identity", {}).get("module", {})) | set(identity["module"])
                    if previous.get("identity", {}).get("module", {}).get(k) != identity["module"].get(k)
                )
                other_run = f"{self.output_dir} holds results of another configuration (differs in: " + (
                    f"{', '.join(diff) or 'data or writer settings'})."
                )
                if not self.replace_other_run:
                    raise RunDirectoryError(f"{other_run} Choose a new output_dir, or delete it.")
        elif self.output_dir.exists() and any(p.name != LOCK for p in self.output_dir.iterdir()):
            raise RunDirectoryError(
                f"{self.output_dir} is not empty and has no {MANIFEST}: it is not a predict run directory."
            )
        trainer.strategy.barrier()  # every rank has read the old manifest before rank 0 changes anything
        if trainer.is_global_zero:
            if other_run:
                rank_zero_info(f"{other_run} Replacing it (replace_other_run=True).")
                for child in self.output_dir.iterdir():  # everything but the lock this run holds
                    if child.name != LOCK:
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
                self._rollback = (created, None)
            RunShards(self.output_dir, self._run_id, remove_invalid=True)
        trainer.strategy.barrier()
        skip = set(RunShards(self.output_dir, self._run_id).index().tolist())  # the same view on every rank
        self._written = []
        if skip:
            rank_zero_info(f"Resuming {self.output_dir}: {len(skip)} samples already written.")
        if hasattr(trainer.datamodule, "skip_indices"):
            trainer.datamodule.skip_indices = skip
        elif skip:
            raise RunDirectoryError(
                "The directory holds finished samples but the data module cannot skip them: use SeedDataModule."
            )
        num_samples = getattr(trainer.datamodule, "num_samples", None)
        finished = num_samples is not None and not missing_indices(sorted(skip), num_samples)
        if trainer.is_global_zero:
            manifest = {
                "format": RUN_FORMAT,
                "identity": identity,
                "run_id": self._run_id,
                "versions": _versions(),
                "world_size": trainer.world_size,
                "num_samples": num_samples,
                "complete": False,
            }
            write_text_atomic(manifest_path, json.dumps(manifest, indent=2))
            prompts = getattr(trainer.datamodule, "prompts", None)
            if prompts is not None:
                write_text_atomic(self.output_dir / PROMPTS, json.dumps(list(prompts), ensure_ascii=False, indent=1))
            if finished:
                # Lightning runs no predict hook for an empty loader, so the table is (re)built here.
                rank_zero_info(f"{self.output_dir} holds every sample already; rebuilding {SCORES}.")
                self.merge(num_samples)
        trainer.strategy.barrier()

    def _acquire_lock(self, trainer: Trainer) -> None:
        """Rank 0 holds an exclusive lock on ``<output_dir>/.lock`` until teardown; every rank learns the outcome."""
        error = None
        if trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.output_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                error = (
                    f"Another `genunc predict` is writing into {self.output_dir} right now (it holds "
                    f"{self.output_dir / LOCK}). Wait for it to finish, then re-run to add what is missing, or "
                    "choose another output_dir."
                )
            else:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()}\n".encode())
                self._lock_fd = fd
        error = trainer.strategy.broadcast(error, src=0)
        if error:
            raise RunDirectoryError(error)

    def _release_lock(self) -> None:
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._lock_fd = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Releases the run lock."""
        if stage == "predict":
            self._release_lock()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A run that fails before any shard was written leaves the directory as it found it."""
        rollback, self._rollback = getattr(self, "_rollback", None), None
        try:
            if not trainer.is_global_zero or rollback is None:
                return
            if any((self.output_dir / "shards").glob("shard-*.safetensors")):
                return  # finished samples stay: a re-run reuses them
            created, previous_text = rollback
            if previous_text is None:
                (self.output_dir / MANIFEST).unlink(missing_ok=True)
            else:
                write_text_atomic(self.output_dir / MANIFEST, previous_text)
            if created:
                self._release_lock()
                shutil.rmtree(self.output_dir, ignore_errors=True)
        finally:
            self._release_lock()

    # -- during sampling -------------------------------------------------------------------

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: ScoredPrediction,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Writes one shard for the batch, atomically."""
        check_prediction(prediction)
        index = prediction["index"].cpu()
        tensors = {
            "index": index.long(),
            "seed": prediction["seed"].cpu().long(),
            "class": prediction["class"].cpu().long(),
        }
        for name, value in prediction["scores"].items():
            tensors[f"score.{name}"] = value.detach().cpu().double()
        if self.save_samples:
            tensors["sample"] = prediction["sample"].detach().cpu().float()
        if "variance_maps" in prediction:
            tensors["variance_map"] = prediction["variance_maps"].detach().cpu().float()
        name = f"shard-{int(index.min()):09d}-{int(index.max()):09d}-{uuid.uuid4().hex[:8]}.safetensors"
        metadata = {"format": SHARD_FORMAT, "run": self._run_id}
        save_safetensors_atomic(tensors, self.output_dir / "shards" / name, "a scored-sample shard", metadata)
        self._written.append(index)
        if self.save_png:
            self._write_pngs(index, prediction["sample"])

    def _write_pngs(self, index: torch.Tensor, samples: torch.Tensor) -> None:
        from torchvision.utils import save_image

        if samples.dim() != 4:
            if not self._warned_png:
                rank_zero_warn("save_png is on but the samples are not images [B, C, H, W]; no PNGs written.")
                self._warned_png = True
            return
        for i, img in zip(index.tolist(), samples.detach().cpu(), strict=True):
            buf = io.BytesIO()
            save_image(img, buf, format="png")
            with atomic_path(self.output_dir / "images" / f"{i:06d}.png") as tmp:
                tmp.write_bytes(buf.getvalue())

    # -- after sampling --------------------------------------------------------------------

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Merges the shards into ``scores.csv`` (rank 0, after every rank has finished)."""
        written = torch.cat(self._written) if self._written else torch.zeros(0, dtype=torch.long)
        per_rank = [written]
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            per_rank = [None] * trainer.world_size
            torch.distributed.all_gather_object(per_rank, written)
        trainer.strategy.barrier()
        error = self._unseen_ranks_error(per_rank, max(1, trainer.num_devices)) if trainer.is_global_zero else None
        error = trainer.strategy.broadcast(error, src=0)  # every rank fails together rather than wait on rank 0
        if error:
            raise RunDirectoryError(error)
        if trainer.is_global_zero:
            self.merge(getattr(trainer.datamodule, "num_samples", None))
        trainer.strategy.barrier()

    def _unseen_ranks_error(self, per_rank: list[torch.Tensor], devices_per_node: int) -> str | None:
        """Names the nodes whose shards rank 0 cannot see (an output directory that is not shared)."""
        seen = RunShards(self.output_dir, self._run_id).index()
        unseen = [r for r, idx in enumerate(per_rank) if idx.numel() and not torch.isin(idx, seen).all()]
        if not unseen:
            return None
        nodes = sorted({r // devices_per_node for r in unseen})
        return (
            f"Shards written by node {', '.join(map(str, nodes))} (global rank {', '.join(map(str, unseen))}) are not "
            f"visible in {self.output_dir} from node 0. In a multi-node run the output directory must be on a "
            "filesystem shared by every node. Re-run on a shared directory; finished samples are reused."
        )

    def merge(self, num_samples: int | None = None) -> Path:
        """Writes the scores table from the shards; checks every index appears exactly once.

        With ``num_samples``, the table holds indices 0 … num_samples − 1 only: shards of a larger
        earlier run stay on disk (a later run may reuse them) but are not part of this run's table.
        """
        cols = read_shards(self.output_dir, self._run_id, samples=False)  # the table only: samples stay on disk
        if not cols:
            raise RunDirectoryError(f"No shards in {self.output_dir}: nothing was generated.")
        if num_samples is not None:
            in_range = cols["index"] < num_samples
            cols = {k: v[in_range] for k, v in cols.items()}
        order = cols["index"].argsort()
        index = cols["index"][order]
        if (index[1:] == index[:-1]).any():
            dup = index[1:][index[1:] == index[:-1]].unique()[:10].tolist()
            raise RunDirectoryError(f"Indices {dup} appear in more than one shard of {self.output_dir}.")
        if num_samples is not None:
            count, first = first_missing(index, num_samples)
            if count:
                raise RunDirectoryError(f"{count} indices are missing (first: {first}); re-run to finish.")
        score_names = sorted(k for k in cols if k.startswith("score."))
        prompts = read_prompts(self.output_dir)
        text = ["prompt"] if prompts is not None else []
        columns = [cols["index"][order], cols["seed"][order], cols["class"][order]]
        columns += [cols[k][order] for k in score_names]
        rows = (
            [row[0], row[1], row[2], *([prompts[row[2]]] if prompts is not None else []),
             *[repr(float(v)) for v in row[3:]]]
            for row in zip(*[c.tolist() for c in columns], strict=True)
        )  # fmt: skip
        header = ["index", "seed", "class", *text, *[k[len("score.") :] for k in score_names]]
        path = write_csv_atomic(self.output_dir / SCORES, header, rows)
        manifest = read_manifest(self.output_dir)
        manifest.update({"complete": True, "num_written": int(index.numel())})
        write_text_atomic(self.output_dir / MANIFEST, json.dumps(manifest, indent=2))
        rank_zero_info(f"Scores of {index.numel()} samples written to {path}")
        return path
