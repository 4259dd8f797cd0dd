"""Episodes stored in a zarr 3 store: ``data/<key>`` arrays over all steps + ``meta/episode_ends``.

The layout is diffusion_policy's: every ``data/<key>`` array has shape ``(T_total, ...)``, episodes
are contiguous, and ``meta/episode_ends[i]`` is the exclusive end step of episode ``i``. Per-episode
scalars (seeds, success flags) live beside it as ``meta/<name>`` arrays of length ``n_episodes``.

Crash safety: a store is created in a hidden sibling folder and renamed into place when complete.
An episode is appended to the ``data/`` arrays first, then to the other ``meta/`` arrays, and
``meta/episode_ends`` is extended last. ``episode_ends`` is the commit record: steps past its last
value, per-episode entries past its length (at most one: an append removes what a failed one left)
and one trailing fill-value entry (an ``episode_ends`` append killed between its resize and its
write) belong to an interrupted write. Readers never see them (:attr:`ReplayBuffer.n_steps` bounds
every view) and opening the store with ``mode="a"`` removes them; a store that failed before its
first commit is emptied, whatever keys its partial arrays had. Chunk files are written atomically
by zarr's ``LocalStore``, so committed episodes stay intact even when a write is killed.

Anything else is damage, not an interrupted write: a non-increasing or out-of-range
``episode_ends``, per-episode arrays shorter than it, ``data/`` arrays shorter than its last end.
Such a store is refused, read or append, and left as it is; ``python -m
s2policy.data.store action=inspect store=<path>`` lists what is wrong, and ``action=repair``
(with ``confirm=true``) keeps the longest valid prefix of committed episodes.

Every chunk is written, even one of fill values only, and arrays say so (attribute
:data:`CHUNKS_ATTR`): a missing chunk file of committed data is an error naming the array and the
steps, never zarr's fill value; a chunk whose blosc header does not match its file (truncated) or
that fails to decode is one too. Arrays written before that attribute existed read absent chunks
as zeros, as zarr always did (zarr skipped all-zero chunks then).

The commit record's update does not depend on what a chunk held before: zarr keeps the old
values of a chunk that a resize shrank (a repair, a removed interrupted write), so before
``meta/episode_ends`` grows by one entry its last chunk is rewritten from the committed values
(zarr then writes the whole chunk, fill values past the end): an append killed between the
resize and the write always leaves a trailing fill-value (0) entry, never a stale end.

Concurrency: one writer per store. :meth:`ReplayBuffer.create` and ``ReplayBuffer.open(path,
"a")`` take an exclusive lock (:class:`s2policy.fileio.WriterLock`, ``.<name>.lock`` beside the
store) held until :meth:`ReplayBuffer.close` (or the end of the process); a second writer is
refused with a sentence naming the holder. Readers take no lock and may open a store while it is
written: they see the episodes committed when they opened it, never part of one.

Crash tests: :func:`s2policy.fileio.crash_point` ends the process at a named point of a write
when the environment variable ``S2POLICY_CRASH_AT`` names it (``name`` or ``name@N``: its N-th
time).

The parts: :mod:`.errors` (the errors and the commands they name), :mod:`.chunks` (chunk layout and
integrity checks, bounded views), :mod:`.commit` (the commit record), :mod:`.buffer` (the store),
:mod:`.repair` (inspect and repair, and their command).
"""

from s2policy.data.store.buffer import ReplayBuffer
from s2policy.data.store.chunks import CHUNK_BYTES, CHUNKS_ATTR, ArrayView, ChunkCheck, check_finite
from s2policy.data.store.commit import CRASH_POINTS, LAYOUT, LAYOUT_VERSION, Commit, is_store
from s2policy.data.store.errors import (
    COMMAND,
    CorruptStoreError,
    StoreLockedError,
    inspect_hint,
    repair_command,
)
from s2policy.data.store.repair import (
    StoreConfig,
    StoreReport,
    examine_store,
    inspect_store,
    main,
    repair_store,
)

__all__ = [
    "CHUNK_BYTES",
    "CHUNKS_ATTR",
    "COMMAND",
    "CRASH_POINTS",
    "LAYOUT",
    "LAYOUT_VERSION",
    "ArrayView",
    "ChunkCheck",
    "Commit",
    "CorruptStoreError",
    "ReplayBuffer",
    "StoreConfig",
    "StoreLockedError",
    "StoreReport",
    "check_finite",
    "examine_store",
    "inspect_hint",
    "inspect_store",
    "is_store",
    "main",
    "repair_command",
    "repair_store",
]
