"""Multi-process training: the train task hands the work to ``torchrun``.

With ``settings.train.processes > 1`` the train step does not train in its own
process: it writes the train settings next to the run's files and starts
``python -m torch.distributed.run --standalone --nproc_per_node=N -m recsys_retrain.train.worker``
(gloo on CPU, NCCL on GPUs), whose rank 0 writes ``train_result.json``. With
``train.nnodes > 1`` the same command meets the other nodes at a c10d rendezvous
(``--nnodes --rdzv_backend=c10d --rdzv_endpoint``) instead of ``--standalone``: the
task's host is one node, and each other node runs :func:`node_command`. The
launcher streams the workers' output into this process's log (an Airflow task log),
and turns a failed run into a one-line :class:`~recsys_retrain.errors.PipelineError`.

The trainer saves an epoch checkpoint per rank (``out_dir/checkpoints``), so when a
run dies, the task's retry calls this again with the same ``out_dir`` and resumes
after the last finished epoch with the same result.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import signal
import subprocess  # nosec B404  # starts torchrun with an argument list, never a shell
import sys
from collections.abc import Sequence
from pathlib import Path

from recsys_retrain.errors import PipelineError
from recsys_retrain.io import write_text
from recsys_retrain.settings import Settings
from recsys_retrain.train.loop import TrainResult

log = logging.getLogger(__name__)

WORKER = "recsys_retrain.train.worker"  # the module each torchrun process runs
SETTINGS_FILE = "train_settings.json"
RESULT_FILE = "train_result.json"
TAIL_LINES = 400  # enough to reach past torchrun's own failure summary to the workers' traceback
# A Python exception line of a worker ("recsys_retrain.errors.DataError: ..."), not torchrun's own summary.
EXCEPTION_LINE = re.compile(r"^(?:\[[^\]]*\]:?\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$")
LAUNCHER_ERRORS = ("ChildFailedError",)


def torchrun_command(
    nproc: int, module: str, args: Sequence[str], nnodes: int = 1, rdzv_endpoint: str | None = None,
    rdzv_id: str = "recsys-train",
) -> list[str]:
    """``python -m torch.distributed.run``: one node with a free port, or one of ``nnodes`` meeting at a c10d rendezvous.

    ``--standalone`` lets the OS pick the port (no clash between concurrent runs). With
    several nodes every node runs the same command; the c10d store lives at
    ``rdzv_endpoint`` (the node whose host it names serves it) and ranks are handed out
    as the nodes arrive.

    Example:
        >>> torchrun_command(2, "recsys_retrain.train.worker", ["--out", "o"])[2:5]
        ['torch.distributed.run', '--standalone', '--nproc_per_node=2']
        >>> torchrun_command(1, "m", [], nnodes=2, rdzv_endpoint="10.0.0.5:29400")[3:8]
        ['--nnodes=2', '--nproc_per_node=1', '--rdzv_backend=c10d', '--rdzv_endpoint=10.0.0.5:29400', '--rdzv_id=recsys-train']
    """
    if nnodes == 1 and rdzv_endpoint is None:
        rendezvous = ["--standalone", f"--nproc_per_node={nproc}"]
    else:
        if not rdzv_endpoint:
            raise PipelineError(f"{nnodes} training nodes need a rendezvous endpoint (train.rdzv_endpoint)")
        rendezvous = [f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
                      f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", module, *args]


def node_command(
    history: Path, catalogue: Path, out_dir: Path, settings: Settings, extra_args: Sequence[str] = ()
) -> list[str]:
    """What each training node runs: torchrun on the worker, with this run's files and the settings' nodes.

    The train task runs it on its own host (:func:`train_distributed`); with
    ``train.nnodes > 1`` the other nodes run the same list (a pod each, or an operator's
    command), after the task wrote ``train_settings.json``: they read it once the
    rendezvous is complete.
    """
    t = settings.train
    args = [*train_args(history, catalogue, out_dir, Path(out_dir) / SETTINGS_FILE), *extra_args]
    return torchrun_command(t.processes, WORKER, args, t.nnodes, t.rdzv_endpoint, t.rdzv_id)


def train_args(history: Path, catalogue: Path, out_dir: Path, settings_file: Path) -> list[str]:
    """The arguments of ``recsys_retrain.train.worker.main``; a caller may append more (e.g. ``--plan plan.json``)."""
    return ["--history", str(history), "--catalogue", str(catalogue), "--out", str(out_dir),
            "--train-settings", str(settings_file)]


def write_train_settings(settings: Settings, out_dir: Path) -> Path:
    """``out_dir/train_settings.json``, written to a temp file then renamed, so every rank reads a whole file."""
    return write_text(settings.train.model_dump_json(indent=2), out_dir / SETTINGS_FILE)


def train_distributed(
    history: Path, catalogue: Path, out_dir: Path, settings: Settings, extra_args: Sequence[str] = ()
) -> TrainResult:
    """Trains with ``settings.train.processes`` processes (on each of ``train.nnodes`` nodes) under torchrun.

    Returns rank 0's result: with several nodes, the node that got global rank 0
    writes it into ``out_dir``, so the nodes share the run folder (a shared volume).

    Args:
        history: interactions parquet (the cycle's ``history.parquet``).
        catalogue: item catalogue parquet.
        out_dir: the run's model folder: settings, epoch checkpoints, ``model.pt`` and
            ``train_result.json`` go here. A retry with the same folder resumes.
        settings: the cycle's settings; only the ``train`` section reaches the workers.
        extra_args: more arguments for ``recsys_retrain.train.worker`` (after the standard ones).

    Returns:
        TrainResult read from ``out_dir/train_result.json``.

    Raises:
        PipelineError: torchrun exited non-zero (the message names the exit code and the
            workers' last error line) or left no result file.

    Example:
        >>> train_distributed(Path("h.parquet"), Path("c.parquet"), Path("run/model"), s)  # doctest: +SKIP
        TrainResult(checkpoint='run/model/model.pt', ...)
    """
    out_dir = Path(out_dir)
    nproc, nnodes = settings.train.processes, settings.train.nnodes
    write_train_settings(settings, out_dir)
    result_file = out_dir / RESULT_FILE
    result_file.unlink(missing_ok=True)  # a result from an earlier attempt must not pass for this one
    cmd = node_command(history, catalogue, out_dir, settings, extra_args)
    what = f"{nproc} processes" if nnodes == 1 else f"{nnodes} nodes x {nproc} processes"
    log.info("launching training (%s): %s", what, " ".join(cmd))
    code, tail = run_streaming(cmd)
    if code != 0:
        raise PipelineError(f"torchrun training ({what}) exited with code {code}: {last_error(tail)}")
    if not result_file.exists():
        raise PipelineError(
            f"torchrun training ({what}) succeeded but wrote no {result_file}"
            + (" (with several nodes, rank 0 writes it: the nodes must share the run folder)" if nnodes > 1 else "")
        )
    return TrainResult.from_dict(json.loads(result_file.read_text()))


def run_streaming(cmd: list[str]) -> tuple[int, list[str]]:
    """Runs ``cmd``, logging each output line as it comes; returns the exit code and the last lines.

    The child gets SIGTERM when this process dies (Linux), so a killed task leaves no
    orphaned workers holding the checkpoint folder.
    """
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    with subprocess.Popen(  # nosec B603  # fixed argument list: this interpreter and torch's launcher
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509 - one C call, see the hook
    ) as proc:
        assert proc.stdout is not None  # nosec B101  # Popen(stdout=PIPE) always sets it
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                log.info("%s", line)
                tail.append(line)
        code = proc.wait()
    return code, list(tail)


def last_error(lines: Sequence[str]) -> str:
    """The workers' last exception line, else the last output line; always one line.

    Example:
        >>> last_error(["Traceback ...", "recsys_retrain.errors.DataError: window is empty", "ChildFailedError: x"])
        'recsys_retrain.errors.DataError: window is empty'
    """
    for line in reversed(lines):
        match = EXCEPTION_LINE.match(line.strip())
        if match and not any(name in match.group(1) for name in LAUNCHER_ERRORS):
            return match.group(1)
    return lines[-1].strip() if lines else "no output"


def _die_with_parent_hook():
    """A pre-exec hook asking Linux for SIGTERM when the launching process dies (None elsewhere).

    libc is loaded here, in the parent: the hook itself only makes one C call, since
    Python code between fork and exec may deadlock when other threads held locks.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl, pr_set_pdeathsig = ctypes.CDLL("libc.so.6", use_errno=True).prctl, 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)
