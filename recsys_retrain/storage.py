"""What the DAG tasks hand each other: URIs under the storage root, never a worker's local paths.

A task may run on another machine than the task before it (Celery queues, Kubernetes),
so an XCom that says ``/home/airflow/.retrain/runs/19980105-19980112`` means nothing
there. Every task therefore returns URIs under ``settings.storage_uri`` (Airflow's
``ObjectStoragePath``: ``file://`` here, ``s3://`` or ``gs://`` by configuration), and
resolves the URIs it is given before the pipeline code sees them, so that code keeps
working on local files:

- a ``file://`` root is used in place: the URI's path is the file (one machine, or a
  volume every worker mounts at the same path);
- any other fsspec protocol is staged: the task copies the cycle folder it works on
  (and, read-only, whatever else it names, such as earlier cycles' per-user scores)
  into a fresh local scratch folder, runs, writes back what it created, changed or
  deleted in that cycle folder, and removes the scratch folder. The write-back runs
  when the step fails too, so a retried training finds its epoch checkpoints.

:func:`step` is the one call a task makes. The rest is the mapping between a root URI
and the local folder that holds its files (:class:`Store`), applied to whole XCom
values: strings that name a path under the folder become URIs on the way out, URIs
under the root become paths on the way in; everything else passes unchanged.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys_retrain.errors import PipelineError
from recsys_retrain.paths import CyclePaths
from recsys_retrain.settings import Settings, get_settings

RUNS = "runs"  # the cycle folders' prefix under the root (settings.runs_dir is <storage_folder>/runs)


@dataclass(frozen=True)
class Store:
    """One storage root (``uri``, no trailing slash) and the local folder holding its files on this worker."""

    uri: str
    local: Path
    conn_id: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> Store:
        return cls(settings.storage_uri, Path(os.path.abspath(settings.storage_folder)), settings.storage.conn_id)

    @property
    def in_place(self) -> bool:
        """A ``file://`` root: tasks read and write its files where they are, nothing is copied."""
        return self.uri.startswith("file://")

    def uri_of(self, path: str | Path) -> str | None:
        """The URI of a local ``path`` under the folder; None when it lies elsewhere.

        Example:
            >>> Store("s3://bucket/retrain", Path("/scratch/t1")).uri_of("/scratch/t1/runs/19980105-19980112/plan.json")
            's3://bucket/retrain/runs/19980105-19980112/plan.json'
        """
        if not os.path.isabs(path) or not Path(os.path.abspath(path)).is_relative_to(self.local):
            return None
        rel = Path(os.path.abspath(path)).relative_to(self.local).as_posix()
        return self.uri if rel == "." else f"{self.uri}/{rel}"

    def path_of(self, uri: str) -> Path | None:
        """The local path of a ``uri`` under the root; None for any other string.

        Example:
            >>> Store("s3://bucket/retrain", Path("/scratch/t1")).path_of("s3://bucket/retrain/runs/a/plan.json")
            PosixPath('/scratch/t1/runs/a/plan.json')
        """
        if uri == self.uri:
            return self.local
        if not uri.startswith(self.uri + "/"):
            return None
        return self.local / uri[len(self.uri) + 1:]

    def key(self, uri: str | None) -> str | None:
        """``uri``'s part under the root (``runs/<start>-<end>``); None for no URI or a bare path (an older XCom).

        A URI outside the root raises a one-line PipelineError.
        """
        if not uri or "://" not in uri:
            return None
        if not uri.startswith(self.uri + "/"):
            raise PipelineError(f"{uri!r} is not under the storage root {self.uri} (storage.uri): was it written by "
                                f"a worker with another configuration?")
        return uri[len(self.uri) + 1:].strip("/")


def to_uris(value: Any, store: Store, cycle: str | None = None) -> Any:
    """``value`` (an XCom: dicts, lists, strings) with every local path under ``store.local`` as its URI.

    ``cycle`` (a staged cycle folder's key, ``runs/<start>-<end>``) also maps an absolute
    path into a folder of that name wherever it lies: files such as ``trained.json`` carry
    the paths of the worker (and scratch folder) that wrote them, and a reused result
    returns them as they were.
    """
    if isinstance(value, dict):
        return {k: to_uris(v, store, cycle) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_uris(v, store, cycle) for v in value)
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    uri = store.uri_of(value)
    if uri is None and cycle:
        parts, name = Path(value).parts, tuple(cycle.split("/"))
        for i in range(len(parts) - len(name) + 1):
            if parts[i:i + len(name)] == name:
                return "/".join((store.uri, *parts[i:]))
    return uri or value


def to_paths(value: Any, store: Store) -> Any:
    """``value`` with every URI under the store's root as its local path (strings; dicts and lists walked)."""
    if isinstance(value, dict):
        return {k: to_paths(v, store) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_paths(v, store) for v in value)
    if isinstance(value, str):
        path = store.path_of(value)
        return str(path) if path is not None else value
    return value


def cycle_uri(start: str, end: str, settings: Settings | None = None) -> str:
    """The URI of the window's cycle folder: ``<storage_uri>/runs/<start>-<end>``."""
    return f"{(settings or get_settings()).storage_uri}/{RUNS}/{CyclePaths.folder_name(start, end)}"


def mounted(value: Any, settings: Settings | None = None) -> Any:
    """``value``'s URIs as local paths, for a consumer that reads a mounted volume itself (the Kubernetes training pod).

    Raises PipelineError when the root is an object store: such a consumer would need to stage its files.
    """
    store = Store.of(settings or get_settings())
    if not store.in_place:
        raise PipelineError(f"storage.uri {store.uri} is an object store; this step reads a mounted volume "
                            f"(a file:// root every worker and the pod mount at the same path)")
    return to_paths(value, store)


def step(fn: Callable[..., Any], *args: Any, folder: str | None = None, reads: Sequence[str] = (),
         settings: Settings | None = None, **kwargs: Any) -> Any:
    """Runs ``fn(*args, **kwargs)`` (a ``recsys_retrain.cycle`` step) on local files; returns its result with URIs.

    Args:
        fn: the step. It gets ``settings=`` (the staged settings, whose ``runs_dir`` is the
            local copy) when its signature names that parameter.
        args: its arguments, XCom values: URIs under the root are given as local paths.
        folder: the cycle folder's URI the step reads and writes; default the ``run_dir``
            of the first argument that has one (what ``pull`` returned); none: no folder.
        reads: glob patterns under the root (``runs/*/per_user_metrics.json``) staged
            read-only beside it, for steps that look at earlier cycles.
        settings: default ``get_settings()``.
    """
    s = settings or get_settings()
    if folder is None:
        folder = next((a["run_dir"] for a in args if isinstance(a, dict) and a.get("run_dir")), None)
    with staged(s, folder, reads) as local:
        store = Store.of(local)
        if "settings" in inspect.signature(fn).parameters:
            kwargs["settings"] = local
        result = fn(*to_paths(args, store), **to_paths(kwargs, store))
        return to_uris(result, store, None if store.in_place else store.key(folder))


@contextmanager
def staged(settings: Settings, folder: str | None = None, reads: Sequence[str] = ()) -> Iterator[Settings]:
    """Settings whose storage folder holds ``folder`` (a URI, or a bare local path) and ``reads`` for the block.

    In place (``file://``, or a bare path from an older XCom): ``settings`` as they are.
    Otherwise a fresh scratch folder with copies of the objects, and the cycle folder's
    changes (new, rewritten, deleted files) written back when the block ends, failed or not.
    """
    store = Store.of(settings)
    key = store.key(folder)
    if store.in_place or (key is None and not reads):
        yield settings
        return
    base = Path(settings.storage.scratch or settings.home / "scratch").absolute()
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="task-", dir=base))
    local = settings.model_copy(update={"storage": settings.storage.model_copy(update={"scratch": scratch})})
    try:
        root = remote_root(store)
        prefix = str(root).rstrip("/") + "/"
        for pattern in reads:
            for obj in root.glob(pattern):
                if obj.is_file():
                    obj.copy(file_path(scratch / str(obj)[len(prefix):]))
        if key:
            download(root / key, scratch / key)
        before = files(scratch / key) if key else {}
        try:
            yield local
        finally:
            if key:
                upload(scratch / key, root / key, before)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def remote_root(store: Store) -> Any:
    """The root as an ``ObjectStoragePath``; a protocol no Airflow provider registers (``memory://``, or ``s3://``
    through s3fs without the Amazon provider) is attached through fsspec with its default credentials."""
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io import attach, has_fs

    protocol = store.uri.split("://", 1)[0]
    if store.conn_id is None and not has_fs(protocol):
        import fsspec

        attach(protocol, fs=fsspec.filesystem(protocol))
    return ObjectStoragePath(store.uri, conn_id=store.conn_id)


def file_path(path: Path) -> Any:
    from airflow.sdk import ObjectStoragePath

    path.parent.mkdir(parents=True, exist_ok=True)
    return ObjectStoragePath(f"file://{path}")


def download(src: Any, dst: Path) -> None:
    """Every object under ``src`` (an ObjectStoragePath folder) to the same relative path under ``dst``."""
    if not src.exists():
        return
    prefix = str(src).rstrip("/") + "/"
    for obj in src.rglob("*"):
        if obj.is_file():
            obj.copy(file_path(dst / str(obj)[len(prefix):]))


def files(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Each file under ``folder`` (relative POSIX path) with its size, mtime and inode: what tells a rewrite."""
    out = {}
    for path in folder.rglob("*") if folder.exists() else ():
        if path.is_file() and not path.name.endswith(".lock"):  # locks guard this worker's copy only
            st = path.stat()
            out[path.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def upload(src: Path, dst: Any, before: dict[str, tuple[int, int, int]]) -> None:
    """Writes back what changed in ``src`` since ``before``: new and rewritten files up, deleted ones removed."""
    after = files(src)
    for rel, stat in after.items():
        if before.get(rel) != stat:
            file_path(src / rel).copy(dst / rel)
    for rel in before.keys() - after.keys():
        (dst / rel).unlink(missing_ok=True)
