"""Worker processes: `serve` runs its worker pool in several processes on one store.

One Python process runs one thread at a time (the GIL), and issuing a certificate is
mostly CPU in this process (JWS signing, TLS, JSON, SQL), so one process tops out near
one core. `serve` therefore works in `worker_processes` processes: itself (with the
HTTP-01 responder) and the others started here, each with a WorkerPool of its own.
They share nothing but the store: orders are claimed under leases, so two processes
never work on the same order, exactly as with several nodes.

Each is a fresh interpreter (`python -m certbroker.worker_processes`: no copied threads
or database connections). The settings, master key included, reach it through a pipe on
its stdin, never the command line or the environment. It says "ready" on stdout once the
store is open (or, instead, "error: " and the one line why not, which serve shows as its
own), starts working on "go", and stops on SIGTERM or when its stdin closes.
On Linux the kernel also kills it when the process that started it ends (prctl
PR_SET_PDEATHSIG), so a killed `serve` leaves nothing running; its orders are resumed
by the next one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import IO

from certbroker.config import Settings
from certbroker.domain.errors import CertbrokerError

log = logging.getLogger("certbroker.workers")

_PR_SET_PDEATHSIG = 1
RESTART_DELAY_MAX = 60.0
READY = b"ready\n"
GO = b"go\n"


@dataclass
class _Slot:
    number: int
    process: subprocess.Popen[bytes]
    started: float
    delay: float = 1.0


class WorkerProcesses:
    """`count` worker processes besides this one, restarted when one dies."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self._slots: list[_Slot] = []
        self._restart_at: dict[int, float] = {}
        self._released = False

    def _spawn(self, number: int, delay: float = 1.0) -> _Slot:
        process = subprocess.Popen(
            [sys.executable, "-m", "certbroker.worker_processes", str(os.getpid()), str(number)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            process_group=0,  # a Ctrl-C in the terminal reaches serve, which stops us
        )
        assert process.stdin is not None
        pickle.dump((self.settings, self._released), process.stdin)
        process.stdin.flush()
        return _Slot(number, process, time.monotonic(), delay)

    def start(self, go: bool = True) -> WorkerProcesses:
        """Start the processes and wait until each has opened the store.

        With go=False they wait for release() before they take any work (a benchmark
        times the work, not the start). Raises CertbrokerError when one ends first.
        """
        self._slots = [self._spawn(n) for n in range(1, self.count + 1)]
        for slot in self._slots:
            assert slot.process.stdout is not None
            said = slot.process.stdout.readline()
            if said != READY:  # its reason, or EOF: it ended
                code = slot.process.wait()
                self.stop(timeout=5.0)
                why = _reason(said) or f"exit code {code}; see its messages above"
                raise CertbrokerError(f"worker process {slot.number} did not start: {why}")
        if go:
            self.release()
        return self

    def release(self) -> None:
        self._released = True
        for slot in self._slots:
            _send(slot.process.stdin, GO)

    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots]

    def down(self) -> list[int]:
        """The numbers of the processes not running now (waiting to be restarted)."""
        return [slot.number for slot in self._slots if slot.process.poll() is not None]

    def check(self) -> None:
        """Restart processes that died, waiting longer each time one dies young."""
        now = time.monotonic()
        for i, slot in enumerate(self._slots):
            if slot.process.poll() is None:
                continue
            due = self._restart_at.get(slot.number)
            if due is None:
                lived = now - slot.started
                delay = 1.0 if lived > RESTART_DELAY_MAX else min(slot.delay * 2, RESTART_DELAY_MAX)
                why = _last_words(slot.process)
                log.error(
                    "worker process %d (pid %d) ended with exit code %s%s; restarting in %.0f s",
                    slot.number,
                    slot.process.pid,
                    slot.process.returncode,
                    f" ({why})" if why else "",
                    delay,
                )
                self._restart_at[slot.number] = now + delay
                slot.delay = delay
            elif now >= due:
                del self._restart_at[slot.number]
                _close(slot.process)
                self._slots[i] = self._spawn(slot.number, slot.delay)

    def terminate(self) -> None:
        """SIGTERM to each: its workers finish the orders at hand, then it ends."""
        for slot in self._slots:
            if slot.process.poll() is None:
                slot.process.terminate()

    def stop(self, timeout: float = 30.0) -> None:
        """terminate(), and wait; SIGKILL what still runs after `timeout`."""
        self.terminate()
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            try:
                slot.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker process %d did not stop; killing it", slot.number)
                slot.process.kill()
                slot.process.wait()
            _close(slot.process)
        self._slots = []


def _send(pipe: IO[bytes] | None, data: bytes) -> None:
    try:
        if pipe is not None:
            pipe.write(data)
            pipe.flush()
    except (BrokenPipeError, ValueError):
        pass  # it ended; check() restarts it


def _reason(said: bytes) -> str:
    """What a worker process said instead of "ready": its one line why, if it gave one."""
    line = said.decode(errors="replace").strip()
    return line.removeprefix("error: ") if line.startswith("error: ") else ""


def _last_words(process: subprocess.Popen[bytes]) -> str:
    """The reason a process that ended said on its way out (restarted ones start while
    nobody reads them), without waiting for more."""
    if process.stdout is None or process.stdout.closed:
        return ""
    os.set_blocking(process.stdout.fileno(), False)
    try:
        said = process.stdout.read() or b""
    except OSError:
        return ""
    return next((_reason(line) for line in said.splitlines() if _reason(line)), "")


def _close(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


# -- inside a worker process ----------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before prctl took effect
        os._exit(0)


def main(argv: list[str]) -> None:
    """The body of one worker process: a WorkerPool until SIGTERM or stdin closes."""
    parent, number = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    settings, go_now = pickle.load(sys.stdin.buffer)  # noqa: S301 - our parent, by pipe
    from certbroker.logs import LevelWatcher, parse_levels, setup_logging
    from certbroker.services.workers import WorkerPool
    from certbroker.wiring import build

    configured = parse_levels(settings.log_levels)
    setup_logging(settings.log_level, configured)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # serve stops us; a stray Ctrl-C does not
    try:
        broker = build(settings)
        LevelWatcher(settings.log_level, configured, broker.runtime.stored_log_levels).start()
    except CertbrokerError as exc:
        # One line, through the pipe, for serve to say as its own: a database that cannot
        # be reached (or any other reason) is no traceback.
        sys.stdout.buffer.write(b"error: " + " ".join(str(exc).split()).encode() + b"\n")
        sys.stdout.buffer.flush()
        sys.exit(exc.exit_code)
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    if not go_now and sys.stdin.buffer.readline() != GO:
        return  # the parent went away before it let us work

    def watch_parent() -> None:
        # The raw descriptor, not sys.stdin: a thread blocked in a buffered read holds
        # its lock, and the interpreter aborts at exit when it cannot take that lock.
        while os.read(sys.stdin.fileno(), 64):
            pass  # EOF: the parent closed the pipe or ended
        stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    pool = WorkerPool(broker.issuance, workers=settings.workers, label=f"p{number}")
    pool.start()
    log.debug("worker process %d (pid %d): %d workers", number, os.getpid(), settings.workers)
    while not stop.wait(1.0):
        pass
    pool.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
