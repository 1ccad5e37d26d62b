"""``animal-assets``: run the asset graph headless on a persistent local Dagster instance.

    animal-assets run --config demo                      # the built-in demo dataset
    animal-assets run --dataset ds801-train-set.tgz --test-set clean-test/ --json run.json
    animal-assets run --unsynced                         # rerun only what is out of date
    ANIMAL_ASSETS_SHARDS=4 animal-assets run --parallel-shards 2   # embed in 4 shards, 2 at a time
    animal-assets observe --review review.csv            # record the input's and review's versions
    animal-assets status                                 # synced / unsynced per asset

Runs land in the instance under ``DAGSTER_HOME`` (default ``./.dagster_home``), so ``make ui``
shows them. The dataset, truth file, test set, review file and class names can also come from
the environment (``ANIMAL_ASSETS_DATASET``, ``ANIMAL_ASSETS_TRUTH``, ``ANIMAL_ASSETS_TEST_SET``,
``ANIMAL_ASSETS_REVIEW``, ``ANIMAL_ASSETS_CLASS_NAMES``), which is what ``dagster dev`` reads.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from animal_assets.core.precision import PRECISIONS
from animal_assets.core.preflight import ENV, RunInputs, expand


def _positive(text: str) -> int:
    """A whole number of at least 1 (an argparse type)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animal-assets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="observe the input and the review, then materialize the graph")
    for p in (run, sub.add_parser("observe", help="record the input's and the review's data versions"),
              sub.add_parser("status", help="print each asset's sync status")):
        p.add_argument("--dataset", help="DS801 folder or .zip/.tar.gz/.tgz (default: demo)")
        p.add_argument("--output", help="output folder (default: var/outputs)")
        p.add_argument("--review", help="review file (CSV: id, action, label, note) that overrules "
                                        "the cleaning decisions it lists")
    run.add_argument("--config", default="default", help="demo, default or a run-config YAML")
    run.add_argument("--truth", help="truth file of a ground-truth benchmark (scoring only)")
    run.add_argument("--test-set", help="external clean test set, same format and class order")
    run.add_argument("--class-names", help="comma-separated class names, in label order")
    run.add_argument("--device", help="auto (default), cpu, cuda")
    run.add_argument("--precision", choices=PRECISIONS,
                     help="encoder and trainer arithmetic; auto: bf16 on CUDA and on CPUs with bf16 in "
                          "hardware (AMX, AVX-512 BF16), else fp32 (default: the run config's)")
    run.add_argument("--select", help="comma-separated assets to materialize (default: all)")
    run.add_argument("--parallel-shards", type=_positive, default=1, metavar="N",
                     help="on a sharded graph (ANIMAL_ASSETS_SHARDS > 1): run N shards at a time, "
                          "each in its own process (default 1)")
    run.add_argument("--unsynced", action="store_true",
                     help="materialize only unsynced assets and what is downstream of them "
                          "(with --select: those of the selection)")
    run.add_argument("--json", help="write a run summary (per-asset time, memory, accuracy)")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress line on stderr (the console log shows the steps instead)")
    run.add_argument("--verbose", action="store_true",
                     help="also print Dagster's error lines of a failed run (by default a failed "
                          "run ends with one line; the UI's event log has every error)")
    return parser


#: Errors that already say what is wrong in one line: printed as ``animal-assets: ...`` without a
#: traceback. A bad --config (FileNotFoundError, ValueError), an output folder that cannot be
#: written (PermissionError, NotADirectoryError, a read-only file system) and a full disk are
#: all OSError or ValueError.
_ONE_LINE = (OSError, ValueError)

#: The exit code of a run that a signal stopped: 128 + the signal's number, as a shell reports it.
_STOPPED_BY = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _raise_interrupt(signo, frame):
    raise KeyboardInterrupt


#: While a run goes on after a stop signal (an interrupt can be raised where a library catches it
#: without a trace, e.g. inside a comparison that a C function calls), the signal is sent again
#: this often, at most _RESENDS times, until the run has stopped.
_RESEND_EVERY_S = 0.5
_RESENDS = 40


class _Signals:
    """What :func:`_signals` yields: which stop signal arrived, and the end of the run. Without
    a wakeup file descriptor (outside the main thread) it sees no signal and does nothing."""

    def __init__(self, read_fd: int | None = None) -> None:
        self._read_fd = read_fd
        self._lock = threading.Lock()
        self._seen: list[int] = []
        self._running = True
        self._resent = 0

    def received(self) -> int | None:
        """The first stop signal that arrived (it reads the signal wakeup file descriptor, which
        records every signal whichever Python handler is installed: Dagster installs its own
        during a run), or None."""
        if self._read_fd is None:
            return None
        with self._lock:
            try:
                self._seen.extend(b for b in os.read(self._read_fd, 1024) if b in _STOPPED_BY)
            except BlockingIOError:
                pass
            return self._seen[0] if self._seen else None

    def resend(self) -> None:
        """Send the stop signal that arrived once more, while the run goes on (at most
        ``_RESENDS`` times)."""
        signo = self.received()
        with self._lock:
            if signo is not None and self._running and self._resent < _RESENDS:
                self._resent += 1
                os.kill(os.getpid(), signo)

    def settle(self) -> None:
        """The run has ended: from now on a signal is only recorded, never raised, and none is
        sent again. Called in the main thread; idempotent."""
        if self._read_fd is None:
            return
        with self._lock:
            self._running = False
        for signo in _STOPPED_BY:
            signal.signal(signo, lambda *_: None)


@contextlib.contextmanager
def _signals():
    """SIGINT and SIGTERM raise KeyboardInterrupt (Dagster turns them into a failed step while
    one runs); yields a :class:`_Signals`. Once one has arrived it is sent again every
    ``_RESEND_EVERY_S`` until the caller settles, so that a run whose interrupt something
    swallowed stops all the same."""
    if threading.current_thread() is not threading.main_thread():
        yield _Signals()
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous_int = signal.getsignal(signal.SIGINT)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    signals = _Signals(read_fd)
    # Dagster mirrors a step's output through child processes (tail, and a Python watcher)
    # started from this thread. A Ctrl-C on a terminal reaches the whole process group, and the
    # watcher would print a KeyboardInterrupt traceback of its own. So SIGINT is blocked in this
    # thread, which the children inherit, and a helper thread that leaves it unblocked receives
    # it for the process (Python still runs the handler in this thread) and sends it again
    # while the run goes on.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    done = threading.Event()

    def receive_and_resend() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        while not done.wait(_RESEND_EVERY_S):
            signals.resend()

    helper = threading.Thread(target=receive_and_resend, name="animal-assets-signals", daemon=True)
    helper.start()
    previous_hook = sys.unraisablehook

    def swallowed(exc_type) -> bool:
        """Whether ``exc_type`` is an interrupt that something caught and reported instead of
        stopping (the helper thread sends the signal again)."""
        return exc_type is not None and (exc_type is KeyboardInterrupt
                                         or exc_type.__name__ == "DagsterExecutionInterruptedError")

    def unraisable(info) -> None:
        # raised where Python cannot propagate it (inside a garbage-collection callback)
        if not swallowed(info.exc_type):
            previous_hook(info)

    class Caught(logging.Filter):
        # caught and logged by a library (SQLAlchemy, closing a connection), traceback and all
        def filter(self, record: logging.LogRecord) -> bool:
            return not (record.exc_info and swallowed(record.exc_info[0]))

    caught = Caught()
    handlers = [h for h in (logging.lastResort, *logging.getLogger("sqlalchemy").handlers,
                            *logging.getLogger().handlers) if h is not None]
    for handler in handlers:
        handler.addFilter(caught)
    sys.unraisablehook = unraisable
    try:
        yield signals
    finally:
        signals.settle()
        for handler in handlers:
            handler.removeFilter(caught)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        done.set()
        helper.join()
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
        signal.set_wakeup_fd(previous_fd)
        os.close(read_fd)
        os.close(write_fd)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    line, interrupted = None, False
    with _signals() as signals:
        try:
            try:
                code = _main(args)
            finally:
                signals.settle()
        except KeyboardInterrupt:
            interrupted = True
            signals.settle()  # when the interrupt came before the first settle had run
        except _ONE_LINE as err:
            line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if isinstance(err, OSError) and err.filename and str(err.filename) not in line:
                line = f"{err.filename}: {line}"
            code = 1
        except Exception as err:
            runner = sys.modules.get("animal_assets.runner")  # imported once a run has started
            if runner is None or not isinstance(err, runner.RunFailed):
                raise
            line, code = str(err), 1
        signo = signals.received()
    if signo is not None or interrupted:
        # also when the run ended anyway (the signal came where Python could not raise it)
        signo = signo or signal.SIGINT
        line = (f"interrupted ({signal.Signals(signo).name}); the assets that finished are kept, "
                "the others are as they were before the run")
        code = _STOPPED_BY[signo]
    if line is not None:
        print(f"animal-assets: {line}", file=sys.stderr)
    return code


def _main(args: argparse.Namespace) -> int:
    for key, var in ENV.items():
        value = getattr(args, key, None)
        if value:
            os.environ[var] = str(expand(value)) if key in (
                "dataset", "truth", "test_set", "output", "review") else value
    if args.command == "run":
        from animal_assets.core.config import load_run_config, params_from_run_config
        from animal_assets.core.shards import shards_from_environment

        # The inputs are checked before anything heavy is imported (torch, dagster) and before
        # the instance is touched, so a refusal answers at once; then the config.
        RunInputs.from_env().check(summary_json=args.json)
        shards_from_environment()
        params_from_run_config(load_run_config(args.config))
    if not os.environ.get("DAGSTER_HOME"):
        # the project-local instance, as `make` sets it up: SQLite, no telemetry (runs offline)
        home = Path(".dagster_home").absolute()
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    # Imported after the environment is set: the definitions read it.
    from animal_assets import runner
    from animal_assets.progress import ProgressBar

    if args.command == "observe":
        for name, version in runner.observe().items():
            print(f"{name} data version: {version}")
        return 0
    if args.command == "status":
        statuses = runner.sync_status()
        width = max([16, *map(len, statuses)])
        for name, status in statuses.items():
            print(f"{name:{width}s} {status}")
        return 0
    summary = runner.run(
        config=args.config,  # by name: the run is tagged with it, and the demo runs as its job
        select=args.select.split(",") if args.select else None,
        unsynced=args.unsynced, precision=args.precision,
        progress=None if args.no_progress else ProgressBar(sys.stderr),
        summary_json=str(expand(args.json)) if args.json else None,
        console_errors=args.verbose, parallel_shards=args.parallel_shards,
    )
    if args.json:
        from animal_assets.core.atomic import write_json

        write_json(expand(args.json), summary)
    runner.print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
