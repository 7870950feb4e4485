"""One global packed stream with O(1), JSON-serializable state, so a run resumes it exactly.

The sequence of global batches is a pure function of (manifest, data, tokenizer, seed,
max_length, batch_size). Every rank computes it (token counts decide what comes next, so every
rank must know them) and materializes only its own batches: rank ``r`` of ``W`` takes batches
``start + r, start + r + W, ...`` where ``start`` is the batch the stream began or resumed at
(0 for a fresh stream, so b ≡ r mod W). Before yielding, a rank runs through the rest of its
group of ``W`` batches, so :meth:`MixtureStream.state_dict` — the state at that group boundary —
is identical on every rank and can be resumed with any number of ranks.

The state is: the batch counter, each dataset's (epoch, position, token counters, drop counts),
and the sample being packed when the batch filled (a reference to its row, not its tokens).

A stream whose output would no longer be the mixture asked for stops with an :class:`Fm9gError`
instead: a transform failing (beyond the dataset's ``max_transform_errors``), a dataset leaving the
mix for a reason the manifest did not plan (:data:`PLANNED_EXITS`), a stream with no batch at all.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fm9g.core.errors import Fm9gError
from fm9g.core.protocols import Tokenizer
from fm9g.mixer.manifest import Manifest, load_manifest
from fm9g.mixer.packing import PackedBatch, Piece, pack
from fm9g.mixer.samples import DROPPED, INVALID_UTF8, STATUS_NAMES, TRANSFORM_FAILED, Chunk, windows
from fm9g.mixer.scheduler import PLANNED_EXITS, DatasetPolicy, DatasetProgress, Scheduler
from fm9g.mixer.sources import (ChunkBuilder, ChunkTask, PrefetchThread, SampleSource, init_worker, open_dataset,
                                rows_used)
from fm9g.mixer.transforms import bind_transform

__all__ = ["MixtureStream", "PackedBatch"]

STATE_FORMAT = "fm9g-stream"
STATE_VERSION = 1
log = logging.getLogger("fm9g.mixer")


@dataclass
class _Current:
    """The sample being packed: which row it is and which of its windows comes next."""

    dataset: int
    epoch: int
    position: int
    chunk: Chunk
    windows: list[tuple[int, int]]
    next_window: int = 0


class MixtureStream:
    """Iterator of this rank's :class:`PackedBatch` es; see the module docstring."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        tokenizer: Tokenizer,
        trust_scripts: bool = False,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
        workers: int = 0,
        prefetch: bool = True,
        max_samples: int | None = None,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise Fm9gError(f"rank {rank} is not in [0, world_size={world_size})")
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.max_length = manifest.max_length
        self.batch_size = manifest.batch_size
        self.capacity = manifest.max_length * manifest.batch_size
        self.rank, self.world_size = rank, world_size
        self.task_names = manifest.task_names
        self._executor = None
        if workers > 0:
            self._executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=init_worker)
        # the thread pays off only when tokenization runs outside the GIL (the hf tokenizer)
        overlaps = callable(getattr(tokenizer, "encode_batch_deferred", None))
        self._thread = PrefetchThread() if prefetch and workers <= 0 and overlaps else None
        datasets = [open_dataset(spec.path) for spec in manifest.datasets]
        self._policies = [DatasetPolicy(spec.abs_weight, spec.allow_repeat, spec.max_epochs) for spec in manifest.datasets]
        self._sources = [self._source(spec, dataset, policy, trust_scripts)
                         for spec, dataset, policy in zip(manifest.datasets, datasets, self._policies)]
        progress = [DatasetProgress(spec.task_name, rows_used(spec, dataset))
                    for spec, dataset in zip(manifest.datasets, datasets)]
        self._next_batch = 0
        self.totals = {"batches": 0, "tokens": 0, "capacity": 0, "pieces": 0}
        self._current: _Current | None = None
        if state is not None:
            progress = self._restore(state, progress)
        self._start = self._next_batch
        self.scheduler = Scheduler(self._policies, progress, self._next_batch)
        if state is not None and state.get("current"):
            self._restore_current(state["current"])
        self._finished = False
        self._reported: set[tuple[int, int]] = set()
        self._sample_limit, self._drawn = max_samples, 0
        for index, state in enumerate(self.scheduler.progress):
            if not state.active and state.left_reason not in PLANNED_EXITS:
                raise self._unplanned_exit(index)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_manifest(
        cls,
        manifest: str | Path | Manifest,
        *,
        tokenizer: Tokenizer | str | None = None,
        max_length: int | None = None,
        batch_size: int | None = None,
        trust_scripts: bool = False,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
        seed: int | None = None,
        workers: int = 0,
        prefetch: bool = True,
        max_samples: int | None = None,
    ) -> MixtureStream:
        """The stream a manifest describes; arguments given here override the manifest's settings.

        ``workers`` > 0 tokenizes in that many worker processes; otherwise, with ``prefetch`` and a
        tokenizer that works outside the GIL (``hf``), one background thread tokenizes each
        dataset's next chunk while the stream finishes and packs the current one. Neither changes
        the stream's output. ``max_samples`` ends the stream after that many samples (counted from
        where it starts; the last one's ``segment`` windows included)."""
        if not isinstance(manifest, Manifest):
            manifest = load_manifest(manifest)
        spec = tokenizer if isinstance(tokenizer, str) else None
        manifest = manifest.with_overrides(max_length=max_length, batch_size=batch_size, seed=seed, tokenizer=spec)
        if tokenizer is None or isinstance(tokenizer, str):
            from fm9g.tokenizers import load_tokenizer

            tokenizer = load_tokenizer(manifest.tokenizer)
        else:
            manifest = manifest.with_overrides(tokenizer=tokenizer.spec)
        return cls(manifest, tokenizer=tokenizer, trust_scripts=trust_scripts, rank=rank,
                   world_size=world_size, state=state, workers=workers, prefetch=prefetch, max_samples=max_samples)

    def _source(self, spec: Any, dataset: Any, policy: DatasetPolicy, trust_scripts: bool) -> SampleSource:
        transform = bind_transform(spec.transform, trust_scripts=trust_scripts, where=f"{self.manifest.source}: {spec.where}")
        template = ChunkTask(
            path=str(spec.path), task_name=spec.task_name, seed=self.manifest.seed, epoch=0, start=0, count=0,
            nlines=rows_used(spec, dataset), transform=spec.transform, trust_scripts=trust_scripts,
            tokenizer_spec=self.tokenizer.spec, max_length=self.max_length, oversize_rule=spec.oversize_rule,
        )
        return SampleSource(template, ChunkBuilder(dataset, transform, self.tokenizer), self._executor,
                            self._thread, policy.may_start_epoch)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The stream state after the last yielded batch (its group boundary), as plain JSON types."""
        current = self._current
        if current is not None and current.next_window < len(current.windows):
            current_json = {
                "task_name": self.task_names[current.dataset], "epoch": current.epoch,
                "position": current.position, "window": current.next_window,
            }
        else:
            current_json = None
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "next_batch": self._next_batch,
            "seed": self.manifest.seed,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "tokenizer": self.tokenizer.fingerprint,
            "mix": [[spec.task_name, spec.abs_weight] for spec in self.manifest.datasets],
            "datasets": [progress.as_json() for progress in self.scheduler.progress],
            "current": current_json,
            "totals": dict(self.totals),
        }
        weights = [[spec.task_name, policy.weight] for spec, policy in zip(self.manifest.datasets, self._policies)]
        if weights != state["mix"]:  # changed during the run (online reweighting); absent otherwise
            state["weights"] = weights
        return state

    def _restore(self, state: dict[str, Any], progress: list[DatasetProgress]) -> list[DatasetProgress]:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise Fm9gError("not a mixture stream state", where="stream state",
                            fix="pass the dict MixtureStream.state_dict() returned (stream_state.json)")
        for key, value in (("seed", self.manifest.seed), ("max_length", self.max_length),
                           ("tokenizer", self.tokenizer.fingerprint)):
            if state.get(key) != value:
                raise Fm9gError(
                    f"the saved stream state was made with {key}={state.get(key)!r} but this stream has {value!r}",
                    where="stream state", fix=f"resume with the same {key}, or start the stream afresh without the state")
        self._next_batch = int(state["next_batch"])
        self.totals.update(state.get("totals", {}))
        saved = {entry["task_name"]: DatasetProgress.from_json(entry) for entry in state["datasets"]}
        mix_changed = [list(pair) for pair in state.get("mix", [])] != [
            [spec.task_name, spec.abs_weight] for spec in self.manifest.datasets]
        restored = []
        for fresh, policy in zip(progress, self._policies):
            old = saved.get(fresh.task_name)
            if old is None:
                restored.append(fresh)
                continue
            if old.nlines != fresh.nlines:
                raise Fm9gError(
                    f"dataset '{fresh.task_name}' has {fresh.nlines} rows but the saved stream state was made "
                    f"with {old.nlines}", where="stream state",
                    fix="restore the original data, or give the changed dataset a new task_name to start it afresh")
            if not old.active and old.left_reason in PLANNED_EXITS and policy.weight > 0 and policy.may_start_epoch(old.epoch):
                old.active, old.left_at_batch, old.left_reason = True, None, None
            if mix_changed:
                old.tokens = 0
            restored.append(old)
        if mix_changed:
            log.info("the mix changed since the saved state: weights apply afresh from batch %d", self._next_batch)
        else:  # weights changed during the run (online reweighting) continue as they were
            current = {name: weight for name, weight in state.get("weights", [])}
            for spec, policy in zip(self.manifest.datasets, self._policies):
                policy.weight = float(current.get(spec.task_name, policy.weight))
        return restored

    def _restore_current(self, current: dict[str, Any]) -> None:
        if current["task_name"] not in self.task_names:
            return
        index = self.task_names.index(current["task_name"])
        chunk = self._sources[index].sample_at(current["epoch"], current["position"])
        pieces = windows(int(chunk.offsets[0]), int(chunk.kept[0]), self.max_length)
        self._current = _Current(index, current["epoch"], current["position"], chunk, pieces, current["window"])

    # ------------------------------------------------------------------ the stream
    def _draw(self) -> bool:
        """Take the next sample from the dataset furthest behind target; ``False`` when none is left
        (or ``max_samples`` were taken)."""
        scheduler = self.scheduler
        while self._sample_limit is None or self._drawn < self._sample_limit:
            index = scheduler.choose()
            if index is None:
                return False
            progress = scheduler.progress[index]
            epoch, position = progress.epoch, progress.position
            chunk, k = self._sources[index].get(epoch, position)
            status, kept = int(chunk.status[k]), int(chunk.kept[k])
            if status in TRANSFORM_FAILED or status == INVALID_UTF8:
                self._skip_failed(index, chunk, k, status)
            scheduler.consume(index, kept, STATUS_NAMES[status] if status else None, self._next_batch)
            if not progress.active and progress.left_reason not in PLANNED_EXITS:
                raise self._unplanned_exit(index)
            if status in DROPPED:
                continue
            self._current = _Current(index, epoch, position, chunk, windows(int(chunk.offsets[k]), kept, self.max_length))
            self._drawn += 1
            return True
        return False

    def _skip_failed(self, index: int, chunk: Chunk, k: int, status: int) -> None:
        """Let a failed transform's sample be skipped while the dataset's ``max_transform_errors``
        allows it (and always text with lone surrogates, skipped like ``fm9g index`` skips it),
        logging the first of each kind; raise when the allowance is used up."""
        spec, progress = self.manifest.datasets[index], self.scheduler.progress[index]
        row, detail = int(chunk.rows[k]), chunk.errors.get(k, "failed")
        transform = spec.transform.name or spec.transform.script
        failed = f"transform '{transform}' of dataset '{spec.task_name}' on row {row} (epoch {chunk.epoch}): {detail}"
        if status in TRANSFORM_FAILED:
            skipped = sum(progress.counts.get(STATUS_NAMES[failure], 0) for failure in TRANSFORM_FAILED)
            if skipped >= spec.max_transform_errors:
                so_far = f", {skipped} skipped so far" if skipped else ""
                raise Fm9gError(
                    failed, where=f"{self.manifest.source}: {spec.where}",
                    fix=f"fix the transform or the row, or let up to N failing samples be skipped and counted with "
                        f"\"max_transform_errors\": N in this dataset's entry (now {spec.max_transform_errors}{so_far})")
        if (index, status) not in self._reported:
            self._reported.add((index, status))
            log.warning("%s; skipped and counted as %s (first of this dataset)", failed, STATUS_NAMES[status])

    def _unplanned_exit(self, index: int) -> Fm9gError:
        """The error for a dataset leaving the mix for a reason the manifest did not ask for."""
        spec, progress = self.manifest.datasets[index], self.scheduler.progress[index]
        where = f"{self.manifest.source}: {spec.where}"
        if progress.left_reason == "no rows":
            return Fm9gError(f"dataset '{spec.task_name}' has no rows, so it cannot have its share of the mixture",
                             where=where, fix="index data into it with fm9g index, or remove it from the manifest")
        dropped = {STATUS_NAMES[status] for status in DROPPED}
        drops = ", ".join(f"{reason} {count}" for reason, count in progress.counts.items() if reason in dropped)
        return Fm9gError(
            f"every one of the {progress.nlines} rows of dataset '{spec.task_name}' was dropped in epoch "
            f"{progress.epoch} (dropped so far: {drops}); it would leave the mixture at batch "
            f"{progress.left_at_batch} and the others would take its share", where=where,
            fix="input_too_long/too_long: raise max_length or use oversize_rule \"segment\"; transform_error/"
                "bad_transform_output/invalid_utf8: fix the transform or the data; or remove the dataset")

    def _collect(self) -> list[Piece]:
        """The pieces of the next global batch (empty when the stream is exhausted)."""
        pieces: list[Piece] = []
        used, capacity = 0, self.capacity
        while True:
            current = self._current
            if current is None or current.next_window >= len(current.windows):
                if not self._draw():
                    return pieces
                current = self._current
            begin, end = current.windows[current.next_window]
            if used + end - begin > capacity:
                return pieces
            pieces.append(Piece(current.dataset, current.chunk.src, current.chunk.tgt, begin, end))
            used += end - begin
            current.next_window += 1

    def __iter__(self) -> MixtureStream:
        return self

    def __next__(self) -> PackedBatch:
        if self._finished:
            raise StopIteration
        own = None
        group_end = self._start + ((self._next_batch - self._start) // self.world_size + 1) * self.world_size
        while self._next_batch < group_end:
            pieces = self._collect()
            if not pieces:
                self._finished = True
                break
            tokens = sum(piece.length for piece in pieces)
            if (self._next_batch - self._start) % self.world_size == self.rank:
                own = pack(self._next_batch, pieces, self.capacity, self.tokenizer.pad_id)
            self.totals["batches"] += 1
            self.totals["tokens"] += tokens
            self.totals["capacity"] += self.capacity
            self.totals["pieces"] += len(pieces)
            self._next_batch += 1
        if own is None:
            self._finished = True
            self.close()
            if self._next_batch == 0:
                raise self._no_batch()
            raise StopIteration
        return own

    def _no_batch(self) -> Fm9gError:
        """The error for a stream that has no batch at all (an empty mixture would train on nothing)."""
        left = ", ".join(f"'{state.task_name}' {state.left_reason or 'active'}" for state in self.scheduler.progress)
        return Fm9gError(f"the mixture has no batch (datasets: {left})", where=self.manifest.source,
                         fix="give the stream a sample budget of at least 1 and datasets with samples that fit max_length")

    def set_weights(self, weights: dict[str, float]) -> None:
        """Change the datasets' target shares from the next sample on (online reweighting); every
        rank must call it at the same point of the stream (between optimizer steps). Each epoch's
        row order is unchanged, so no row is repeated or skipped within an epoch; the new weights
        are part of :meth:`state_dict`, and a resumed stream continues with them."""
        missing = [spec.task_name for spec in self.manifest.datasets if spec.task_name not in weights]
        if missing or any(not weight >= 0 for weight in weights.values()):
            raise Fm9gError(f"new mixture weights must give every task a weight ≥ 0 (missing: {missing})",
                            where="online mixing")
        self.scheduler.set_weights([weights[spec.task_name] for spec in self.manifest.datasets])

    @property
    def weights(self) -> dict[str, float]:
        """The target shares in effect (the manifest's, unless :meth:`set_weights` changed them)."""
        return {spec.task_name: policy.weight for spec, policy in zip(self.manifest.datasets, self._policies)}

    @property
    def progress(self) -> list[DatasetProgress]:
        """Each dataset's epoch, position, token and drop counts (manifest order)."""
        return self.scheduler.progress

    def close(self) -> None:
        """Stop worker processes and the prefetch thread (if any). The stream can still be
        iterated, building chunks in this thread on demand."""
        if self._executor is not None or self._thread is not None:
            for source in self._sources:
                source.stop_prefetching()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._thread is not None:
            self._thread.shutdown()
            self._thread = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
