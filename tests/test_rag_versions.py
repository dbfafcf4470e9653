"""One writer per collection, consistent readers: versions, the lock, stale copies, the old layout, real processes.

Real files from ../shared/testdata, the real bundled embedder, real separate processes for the
concurrency tests (``multiprocessing`` with ``spawn``, as two web workers or a worker and the CLI would be).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rag.embedders import BUNDLED, get_embedder
from rag.events import EmbedProgress, IndexUpdated
from rag.index import (
    DATA_FILES,
    KEEP_VERSIONS,
    MANIFEST,
    CollectionBusyError,
    RagIndex,
    ReadOnlyIndexError,
    StaleIndexError,
    collection_lock,
    current_version,
    lock_path,
)
from rag.pipeline import PipelineSpec
from rag.retrieve import search

DOCS = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "docs" / "unstructured"
pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason=f"shared test data missing at {DOCS}")
MEMO, WAR = DOCS / "fake-memo.pdf", DOCS / "book-war-and-peace-1p.txt"
# Small real files: each adds one file (a few chunks) per version, so many versions stay quick to write.
SMALL = [DOCS / n for n in ("fake-text.txt", "fake-doc.rtf", "codeblock.md", "fake-html.html", "simple-table.md",
                            "fake-text-utf-16.txt")]


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(BUNDLED)


def small_spec() -> PipelineSpec:
    return PipelineSpec().with_params("split", chunk_size=500, chunk_overlap=50)


def run(events) -> IndexUpdated:
    events = list(events)
    assert isinstance(events[-1], IndexUpdated)
    return events[-1]


def version_dirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def test_each_save_is_a_new_version_swapped_in_atomically(embedder, tmp_path):
    path = tmp_path / "handbook"
    index = RagIndex.create(path, small_spec())
    assert index.version == 1 and current_version(path) == 1
    assert run(index.add_files([MEMO])).version == 2 == index.version
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["version"] == 2 and manifest["data"] == "v000002"
    assert json.loads((path / "v000002" / MANIFEST).read_text())["files"] == manifest["files"]
    assert lock_path(path) == tmp_path / "handbook.lock" and lock_path(path).exists()

    # A batch that changes nothing is no new version; removing nothing neither.
    assert run(index.add_files([MEMO])).version == 2
    assert run(index.remove(["not-there.txt"])).version == 2
    for n, doc in enumerate(SMALL[:3], start=3):
        assert run(index.add_files([doc])).version == n
    # Only the newest versions are kept; no temporary folder is left behind.
    assert version_dirs(path) == [f"v{n:06d}" for n in range(5 - KEEP_VERSIONS + 1, 6)]
    reopened = RagIndex.open(path)
    assert reopened.version == 5 and set(reopened.files) == {MEMO.name, *(d.name for d in SMALL[:3])}


def test_a_stale_copy_is_refused_and_nothing_is_lost(embedder, tmp_path):
    path = tmp_path / "shared"
    RagIndex.create(path, small_spec())
    mine, theirs = RagIndex.open(path), RagIndex.open(path)
    run(theirs.add_files([WAR]))
    with pytest.raises(StaleIndexError, match="'shared' is now at version 2, but this copy is version 1"):
        run(mine.add_files([MEMO]))
    assert set(RagIndex.open(path).files) == {WAR.name}
    # The same change through edit() starts from the latest version and keeps both.
    with RagIndex.edit(path) as index:
        run(index.add_files([MEMO]))
    assert set(RagIndex.open(path).files) == {WAR.name, MEMO.name}


def test_a_reader_keeps_answering_while_newer_versions_are_written(embedder, tmp_path):
    path = tmp_path / "handbook"
    with RagIndex.edit(path, spec=small_spec()) as index:
        run(index.add_files([WAR, MEMO]))
    reader = RagIndex.open(path, read_only=True)
    question = "What did Prince Vasili say about Genoa and Lucca?"
    before = [h.position for h in search(reader, question).hits]
    answers: list[list[int]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            answers.append([h.position for h in search(reader, question).hits])

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        for doc in SMALL[:4]:  # enough versions that the reader's own folder gets pruned
            with RagIndex.edit(path) as index:
                run(index.add_files([doc]))
    finally:
        stop.set()
        asker.join()
    assert not (path / f"v{reader.version:06d}").exists()
    assert len(answers) > 1 and all(a == before for a in answers)
    assert reader.version == 2 and len(reader.files) == 2
    with pytest.raises(ReadOnlyIndexError):
        run(reader.add_files([SMALL[0]]))
    assert RagIndex.open(path).version == 6


def test_a_cancelled_change_leaves_the_collection_as_it_was(embedder, tmp_path):
    path = tmp_path / "handbook"
    with RagIndex.edit(path, spec=small_spec()) as index:
        run(index.add_files([MEMO]))
    before = (path / MANIFEST).read_bytes()
    with RagIndex.edit(path) as index:
        events = index.add_files([WAR, SMALL[0]])
        for event in events:
            if isinstance(event, EmbedProgress):
                break
        events.close()  # what a cancelled job does between batches
    assert (path / MANIFEST).read_bytes() == before
    assert version_dirs(path) == ["v000001", "v000002"]
    assert set(RagIndex.open(path).files) == {MEMO.name}


def test_the_lock_is_exclusive_and_a_waiter_can_give_up(tmp_path):
    path = tmp_path / "busy"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with collection_lock(path):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    waited: list[bool] = []
    start = time.monotonic()
    with (pytest.raises(CollectionBusyError, match="'busy' is being changed by someone else"),
          RagIndex.edit(path, timeout=0.3, on_wait=lambda: waited.append(True))):
        pass
    assert waited == [True] and 0.3 <= time.monotonic() - start < 3
    release.set()
    holder.join()
    with RagIndex.edit(path, spec=small_spec(), timeout=1) as index:
        assert index.version == 1


def _legacy_copy(built: Path, target: Path) -> None:
    """The single-folder layout of earlier releases: data files beside a manifest without version or pointer."""
    manifest = json.loads((built / MANIFEST).read_text())
    data = built / manifest.pop("data")
    target.mkdir()
    for name in DATA_FILES:
        shutil.copy(data / name, target / name)
    manifest.pop("version")
    manifest["manifest_version"] = 1
    (target / MANIFEST).write_text(json.dumps(manifest))


def manifest_data(path: Path) -> str:
    return json.loads((path / MANIFEST).read_text())["data"]


def test_the_old_single_folder_layout_opens_and_moves_on_its_first_write(embedder, tmp_path):
    built = tmp_path / "built"
    with RagIndex.edit(built, spec=small_spec()) as index:
        run(index.add_files([MEMO]))
    legacy = tmp_path / "old"
    _legacy_copy(built, legacy)
    old = RagIndex.open(legacy)
    assert old.version == 0 and set(old.files) == {MEMO.name}
    assert np.array_equal(old.vectors, RagIndex.open(built).vectors)
    with RagIndex.edit(legacy) as index:
        assert run(index.add_files([WAR])).version == 1
    assert manifest_data(legacy) == "v000001" and (legacy / "chunks.jsonl").exists()  # kept for slow readers
    for doc in SMALL[:2]:
        with RagIndex.edit(legacy) as index:
            run(index.add_files([doc]))
    assert not (legacy / "chunks.jsonl").exists() and not (legacy / "embeddings.npy").exists()
    assert set(RagIndex.open(legacy).files) == {MEMO.name, WAR.name, *(d.name for d in SMALL[:2])}


def _add_in_another_process(path: str, doc: str, barrier, out: str) -> None:
    """A separate process adding one file through the locked API, once both processes are ready."""
    from rag.embedders import BUNDLED, get_embedder
    from rag.index import RagIndex

    get_embedder(BUNDLED)
    barrier.wait(120)
    waited = []
    with RagIndex.edit(path, spec=small_spec(), on_wait=lambda: waited.append(time.time())) as index:
        for _ in index.add_files([doc]):
            pass
        version = index.version
    Path(out).write_text(json.dumps({"version": version, "waited": bool(waited)}))


def test_two_processes_adding_at_once_both_end_up_in_the_collection(tmp_path):
    path = tmp_path / "together"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_add_in_another_process, args=(str(path), str(doc), barrier, str(tmp_path / f"{i}")))
             for i, doc in enumerate((WAR, MEMO))]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(240)
        assert proc.exitcode == 0
    results = [json.loads((tmp_path / str(i)).read_text()) for i in range(2)]
    index = RagIndex.open(path)
    assert set(index.files) == {WAR.name, MEMO.name}
    assert index.version == 3 and sorted(r["version"] for r in results) == [2, 3]
    assert any(r["waited"] for r in results)  # they really overlapped: one waited for the other's lock
    assert len(index.chunks) == len(index.vectors) == index.faiss.ntotal
    assert search(index, "20,000 bottles of water were delivered").hits[0].chunk.source == MEMO.name
    assert search(index, "Genoa and Lucca").hits[0].chunk.source == WAR.name


def _write_versions(path: str, docs: list[str]) -> None:
    for doc in docs:
        with RagIndex.edit(path) as index:
            for _ in index.add_files([doc]):
                pass


def test_readers_opening_during_writes_always_get_a_complete_version(embedder, tmp_path):
    path = tmp_path / "busy"
    with RagIndex.edit(path, spec=small_spec()) as index:
        run(index.add_files([MEMO]))
    docs = [str(d) for d in SMALL]
    writer = threading.Thread(target=_write_versions, args=(str(path), docs))  # processes: see the test above
    writer.start()
    seen: set[int] = set()
    while writer.is_alive() or not seen:
        index = RagIndex.open(path)
        seen.add(index.version)
        assert len(index.files) == index.version - 1  # each version adds exactly one file
        assert len(index.chunks) == len(index.vectors) == index.faiss.ntotal
        assert sum(r.chunks for r in index.files.values()) == len(index.chunks)
    writer.join(60)
    assert RagIndex.open(path).version == 2 + len(docs)
    assert len(seen) >= 3
