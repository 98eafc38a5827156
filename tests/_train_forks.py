"""Training runs as forks of one interpreter that has already imported the trainer.

A fresh ``python -m nlp_decouple.train`` spends most of a tiny run importing torch, transformers, datasets and
scikit-learn; the kill-and-resume tests start several such runs each. Here one server process (``python
tests/_train_forks.py``) imports the command and the trainer once, does no torch work (a fork of a running
OpenMP pool can deadlock in the child), and forks a child per run. Each child is a process of its own, running
``nlp_decouple.cli.train.main`` (what ``python -m nlp_decouple.train`` runs) with its output in a log file: it
can be SIGKILLed at any point like a fresh interpreter.

Protocol, one line each way: ``run {"argv": [...], "log": PATH, "env", "append", "cwd"}`` -> ``started PID``;
``poll PID`` -> ``running`` or ``exited CODE`` (-N: killed by signal N); ``wait PID`` -> ``exited CODE``. One
request at a time, no threads in the server (a fork while another thread holds a lock can leave the child stuck).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def _status_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _child(argv: list[str], log: str, env: dict[str, str] | None, append: bool, cwd: str | None) -> None:
    code = 1
    try:
        if cwd is not None:
            os.chdir(cwd)
        if env is not None:  # the environment the caller would have given a fresh interpreter
            os.environ.clear()
            os.environ.update(env)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.argv = [sys.argv[0], *argv]
        from nlp_decouple.cli.train import main

        code = main(argv)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the log, like an interpreter's traceback
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    from nlp_decouple.cli.train import main  # noqa: F401 - the imports each child would otherwise pay
    from nlp_decouple.trainer import Trainer  # noqa: F401

    print("ready", flush=True)
    finished: dict[int, int] = {}
    for line in sys.stdin:
        verb, _, arg = line.strip().partition(" ")
        if verb == "run":
            request = json.loads(arg)
            pid = os.fork()
            if pid == 0:
                _child(request["argv"], request["log"], request.get("env"), request.get("append", False),
                       request.get("cwd"))
            reply = f"started {pid}"
        elif verb in ("poll", "wait"):
            pid = int(arg)
            if pid not in finished:
                done, status = os.waitpid(pid, 0 if verb == "wait" else os.WNOHANG)
                if done:
                    finished[pid] = _status_code(status)
            reply = f"exited {finished[pid]}" if pid in finished else "running"
        else:
            reply = f"unknown request {line.strip()!r}"
        print(reply, flush=True)


class TrainForks:
    """The test side: start the server once, then start, poll, wait for and kill training runs."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.lock = threading.Lock()  # one request and its answer at a time, whichever thread asks
        self.server = subprocess.Popen([sys.executable, __file__], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        assert self._read() == "ready", "the training fork server did not start"

    def _read(self) -> str:
        line = self.server.stdout.readline()
        assert line, f"the training fork server exited ({self.server.poll()})"
        return line.strip()

    def _ask(self, request: str) -> str:
        with self.lock:
            self.server.stdin.write(request + "\n")
            self.server.stdin.flush()
            return self._read()

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None, append: bool = False,
              cwd: Path | None = None) -> int:
        """Start ``python -m nlp_decouple.train *argv`` (as a fork), its output to ``log``; its pid."""
        request = {"argv": [str(a) for a in argv], "log": str(log), "env": env, "append": append,
                   "cwd": None if cwd is None else str(cwd)}
        reply = self._ask("run " + json.dumps(request))
        assert reply.startswith("started "), reply
        return int(reply.split()[1])

    def poll(self, pid: int) -> int | None:
        reply = self._ask(f"poll {pid}")
        return None if reply == "running" else int(reply.split()[1])

    def wait(self, pid: int, timeout: float = 300) -> int:
        """The run's exit code; a run still going after ``timeout`` seconds is SIGKILLed and fails the test."""
        deadline = time.monotonic() + timeout
        while (code := self.poll(pid)) is None:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                self._ask(f"wait {pid}")
                raise AssertionError(f"training run {pid} still going after {timeout} s")
            time.sleep(0.05)
        return code

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=60)


if __name__ == "__main__":
    serve()
