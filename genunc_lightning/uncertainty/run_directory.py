"""The predict run directory's format: its files, the run's identity, and reading them with checks.

``ScoredSampleWriter`` writes a run directory and everything downstream reads it through this module:

- ``manifest.json``: a JSON object; ``identity`` (what must match for two runs to share results) and
  ``run_id``, its SHA-256, which every shard of the run records;
- ``shards/shard-<first>-<last>-<uid>.safetensors``: ``index``, ``seed``, ``class``, ``score.<name>`` and
  optionally ``sample`` and ``variance_map``, with the metadata ``format`` and ``run``;
- ``scores.csv``: one row per index, ``index,seed,class,<score columns>``.

Every reader checks what it reads and fails with one ``RunDirectoryError`` that names the file and the
fix; a shard of another run (or of another shape) is never merged silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from genunc_lightning.data.predict import MAX_SAMPLES

MANIFEST = "manifest.json"
SCORES = "scores.csv"
LOCK = ".lock"
SHARD_FORMAT = "genunc-lightning/scored-shard"
RUN_FORMAT = "genunc-lightning/predict-run"
TABLE_COLUMNS = ("index", "seed", "class")
PROMPTS = "prompts.json"  # a prompt run's prompt list, in order: row i's prompt is prompts[class_i]
TEXT_COLUMNS = ("prompt",)  # table columns of text, not numbers
PER_SAMPLE_TENSORS = ("sample", "variance_map")  # the large columns; the rest make the scores table

_NEW_RUN = "Re-run `genunc predict` into a new output_dir, or delete this one."
_RERUN = "Re-run the same `genunc predict` command: it rebuilds the table from the shards, generating what is missing."


class RunDirectoryError(ValueError):
    """The output directory holds another run's results, or a run's files are inconsistent."""


def run_id(identity: dict[str, Any]) -> str:
    """SHA-256 of a run's identity (canonical JSON): what each shard of the run records."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The run's manifest, checked before any of its values is used (errors name the file).

    Raises:
        RunDirectoryError: no manifest, not JSON, not an object with an ``identity`` object, or a
            ``num_samples`` that no run directory holds.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise RunDirectoryError(f"{directory} is not a predict run directory (no {MANIFEST}).")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirectoryError(f"{path} is not valid JSON ({err}): the run directory is damaged. {_NEW_RUN}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("identity"), dict):
        what = type(manifest).__name__ if not isinstance(manifest, dict) else "an object whose identity is not one"
        raise RunDirectoryError(
            f"{path} is JSON but not a predict run's manifest (an object with an 'identity' object; this is {what}): "
            f"the run directory is damaged. {_NEW_RUN}"
        )
    n = manifest.get("num_samples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES):
        raise RunDirectoryError(
            f"{path} gives num_samples {n!r}, which no run directory holds (a whole number from 1 to "
            f"{MAX_SAMPLES:.0e}): the manifest is damaged. {_NEW_RUN}"
        )
    return manifest


def first_missing(index: torch.Tensor, num_samples: int, limit: int = 10) -> tuple[int, list[int]]:
    """(how many of 0 … num_samples − 1 ``index`` lacks, the first ``limit`` of them).

    Memory grows with ``index``, not with ``num_samples``: a damaged count cannot exhaust it.
    """
    present = index.unique()
    present = present[(present >= 0) & (present < num_samples)]
    candidates = torch.arange(min(num_samples, present.numel() + limit))
    return num_samples - present.numel(), candidates[~torch.isin(candidates, present)][:limit].tolist()


def read_scores(directory: str | Path) -> dict[str, torch.Tensor]:
    """The merged scores table of a run directory as columns (``index``, ``seed``, ``class``, scores).

    Text columns (a prompt run's ``prompt``) are left out: ``read_prompts`` gives the prompts.

    Raises:
        FileNotFoundError: no table.
        RunDirectoryError: an empty table, a short row, or a value that is not a number (naming the row).
    """
    path = Path(directory) / SCORES
    if not path.is_file():
        raise FileNotFoundError(f"No {SCORES} in {directory}: run `genunc predict` into it first.")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][: len(TABLE_COLUMNS)] != list(TABLE_COLUMNS):
        raise RunDirectoryError(f"{path} is empty or has no '{','.join(TABLE_COLUMNS)},…' header. {_RERUN}")
    header, body = rows[0], rows[1:]
    if not body:
        raise RunDirectoryError(f"{path} has a header but no rows. {_RERUN}")
    cols: dict[str, list] = {name: [] for name in header}
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise RunDirectoryError(f"{path}, line {line}: {len(row)} values for {len(header)} columns. {_RERUN}")
        for name, value in zip(header, row, strict=True):
            if name in TEXT_COLUMNS:
                continue
            try:
                cols[name].append(int(value) if name in TABLE_COLUMNS else float(value))
            except ValueError:
                raise RunDirectoryError(
                    f"{path}, line {line}: column {name!r} holds {value!r}, which is not a number. {_RERUN}"
                ) from None
    return {
        name: torch.tensor(values, dtype=torch.long if name in TABLE_COLUMNS else torch.float64)
        for name, values in cols.items()
        if name not in TEXT_COLUMNS
    }


def read_prompts(directory: str | Path) -> list[str] | None:
    """A prompt run's prompt list (``prompts.json``; row i's prompt is ``prompts[class_i]``), else ``None``.

    Raises:
        RunDirectoryError: the file is not a JSON list of strings.
    """
    path = Path(directory) / PROMPTS
    if not path.is_file():
        return None
    try:
        prompts = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RunDirectoryError(f"{path} is not valid JSON ({err}). {_RERUN}") from None
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RunDirectoryError(f"{path} is not a list of prompts. {_RERUN}")
    return prompts


class RunShards:
    """The shards of one run, checked and indexed: which file holds each sample; columns read on demand.

    Opening reads each shard's header and ``index`` only, so a run of any size is indexed in little
    memory; ``columns`` concatenates small columns, ``iter_column`` and ``take`` read the large ones
    shard by shard.

    Args:
        directory: the run directory.
        run: the run's ``run_id``; a shard that records another is foreign.
        remove_invalid: delete unreadable or foreign shards (with a warning) so that they are generated
            again, instead of refusing the directory.

    Raises:
        RunDirectoryError: without ``remove_invalid``, a shard that is unreadable, of another run, or
            whose columns or shapes differ from the others (naming the file).
    """

    def __init__(self, directory: str | Path, run: str, remove_invalid: bool = False) -> None:
        self.directory = Path(directory)
        self.paths: list[Path] = []
        self.indices: list[torch.Tensor] = []
        self.shapes: dict[str, tuple[int, ...]] = {}  # per-row shape of every column, from the first shard
        for path in sorted((self.directory / "shards").glob("shard-*.safetensors")):
            try:
                index, shapes = self._check(path, run)
            except RunDirectoryError as err:
                if not remove_invalid:
                    raise
                rank_zero_warn(f"{err} Its samples will be generated again.")
                path.unlink(missing_ok=True)
                continue
            self.shapes = self.shapes or shapes
            self.paths.append(path)
            self.indices.append(index)

    def _check(self, path: Path, run: str) -> tuple[torch.Tensor, dict[str, tuple[int, ...]]]:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                index = f.get_tensor("index") if "index" in shapes else None
        except Exception as err:  # a truncated file raises safetensors' own error types
            raise RunDirectoryError(f"Unreadable shard {path}: {' '.join(str(err).split())}.") from err
        if meta.get("format") != SHARD_FORMAT or index is None:
            raise RunDirectoryError(f"{path} is not a scored-sample shard.")
        if meta.get("run") != run:
            raise RunDirectoryError(
                f"Shard {path} belongs to another run (its run id {str(meta.get('run'))[:12]}… is not this run's "
                f"{run[:12]}…, the hash of {MANIFEST}'s identity): it was copied in, or written by another "
                "configuration."
            )
        rows = {k: s[1:] for k, s in shapes.items()}
        if any(s[:1] != (index.numel(),) for s in shapes.values()):
            raise RunDirectoryError(f"Shard {path} has columns of different lengths: it is damaged.")
        if self.shapes and rows != self.shapes:
            raise RunDirectoryError(
                f"Shard {path} holds other columns or shapes ({_shapes_text(rows)}) than the run's other shards "
                f"({_shapes_text(self.shapes)}): it belongs to another run."
            )
        return index.long(), rows

    def __len__(self) -> int:
        return sum(i.numel() for i in self.indices)

    def index(self) -> torch.Tensor:
        """Every index the shards hold, shard after shard (unsorted, possibly with gaps)."""
        return torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long)

    def columns(self, names: Sequence[str] | None = None, samples: bool = True) -> dict[str, torch.Tensor]:
        """Concatenated columns (``names``, or all; ``samples=False`` leaves out the per-sample tensors)."""
        from safetensors import safe_open

        keys = [k for k in self.shapes if (names is None or k in names) and (samples or k not in PER_SAMPLE_TENSORS)]
        parts = {k: [] for k in keys}
        for path in self.paths:
            with safe_open(str(path), framework="pt") as f:
                for k in keys:
                    parts[k].append(f.get_tensor(k))
        return {k: torch.cat(v) for k, v in sorted(parts.items()) if v}

    def iter_column(self, name: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(index, values) of one column, one shard at a time."""
        from safetensors import safe_open

        for path, index in zip(self.paths, self.indices, strict=True):
            with safe_open(str(path), framework="pt") as f:
                yield index, f.get_tensor(name)

    def take(self, indices: torch.Tensor, name: str = "sample") -> torch.Tensor:
        """The rows of column ``name`` for ``indices``, in that order, reading only the shards that hold them.

        Raises:
            RunDirectoryError: an index no shard holds.
        """
        from safetensors import safe_open

        indices = torch.as_tensor(indices, dtype=torch.long).flatten()
        held = self.index()
        shard_of = torch.repeat_interleave(
            torch.arange(len(self.indices)), torch.tensor([len(i) for i in self.indices])
        )
        row_of = torch.cat([torch.arange(len(i)) for i in self.indices]) if self.indices else held
        order = held.argsort()  # one sorted lookup for all indices, instead of a search per shard
        where = torch.searchsorted(held[order], indices).clamp(max=max(len(held) - 1, 0))
        found = order[where] if len(held) else where
        if not len(held) or not torch.equal(held[found], indices):
            missing = indices[held[found] != indices] if len(held) else indices
            raise RunDirectoryError(f"No shard of {self.directory} holds indices {missing[:10].tolist()}.")
        out = torch.empty((indices.numel(), *self.shapes[name]))
        for shard in shard_of[found].unique().tolist():
            wanted = shard_of[found] == shard
            with safe_open(str(self.paths[shard]), framework="pt") as f:
                out[wanted] = f.get_tensor(name)[row_of[found[wanted]]].float()
        return out


class RunSamples:
    """A run's samples in table order, read from the shards only when used: ``x[positions]``, ``shape``, ``map``.

    Indexing reads just the shards that hold the rows asked for (the grids of the most and least
    uncertain samples), and ``map`` runs networks over the samples one shard at a time (features), so
    the samples are never all in memory.

    Args:
        shards: the run's shards.
        order: the sample index of each table row.
    """

    def __init__(self, shards: RunShards, order: torch.Tensor) -> None:
        if "sample" not in shards.shapes:
            raise RunDirectoryError(
                f"{shards.directory} was written with save_samples=false: there are no samples to evaluate. Re-run "
                "`genunc predict` with writer.save_samples true into a new output_dir."
            )
        self.shards, self.order = shards, order

    @property
    def shape(self) -> torch.Size:
        """(rows, *one sample's shape)."""
        return torch.Size((len(self.order), *self.shards.shapes["sample"]))

    def dim(self) -> int:
        """As ``Tensor.dim``."""
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, positions: Any) -> torch.Tensor:
        return self.shards.take(self.order[positions])

    def map(self, functions: Sequence[Any], progress: str | None = None) -> list[torch.Tensor]:
        """Each function's outputs [rows, ...] in table order, computed shard by shard over the samples.

        Args:
            functions: callables from a batch of samples to a batch of outputs.
            progress: a progress bar with this description (on a terminal).
        """
        from tqdm.auto import tqdm

        position = torch.full((int(self.order.max()) + 1,), -1, dtype=torch.long)
        position[self.order] = torch.arange(len(self.order))
        outputs: list[torch.Tensor | None] = [None] * len(functions)
        shards = self.shards.iter_column("sample")
        # disable=None: a bar on a terminal only (none in logs and captured output)
        bar = tqdm(shards, total=len(self.shards.paths), desc=progress, unit="shard",
                   disable=True if progress is None else None)  # fmt: skip
        for index, values in bar:
            inside = index < len(position)
            rows = torch.full_like(index, -1)
            rows[inside] = position[index[inside]]
            keep = rows >= 0  # shards of a larger earlier run may hold indices this table leaves out
            if not keep.any():
                continue
            for j, fn in enumerate(functions):
                y = fn(values[keep])
                if outputs[j] is None:
                    outputs[j] = torch.empty((len(self.order), *y.shape[1:]), dtype=y.dtype)
                outputs[j][rows[keep]] = y
        return [o for o in outputs if o is not None]


def _shapes_text(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} {list(s)}" for k, s in sorted(shapes.items()))


def read_shards(
    directory: str | Path,
    run: str | None = None,
    remove_invalid: bool = False,
    columns: Sequence[str] | None = None,
    samples: bool = True,
) -> dict[str, torch.Tensor]:
    """Concatenates every shard of run ``run`` in a run directory (unsorted, possibly with gaps).

    Args:
        directory: the run directory.
        run: the run's ``run_id`` (default: the one of the directory's manifest).
        remove_invalid: delete shards that cannot be read, or belong to another run, so they are regenerated.
        columns: read only these columns (all when ``None``).
        samples: ``False`` skips the per-sample tensors (``sample``, ``variance_map``), for the table alone.
    """
    run = run if run is not None else run_id(read_manifest(directory)["identity"])
    return RunShards(directory, run, remove_invalid).columns(columns, samples)
