"""Tetragon's export file, written as its lumberjack writer does (vendor/github.com/cilium/
lumberjack/v2/lumberjack.go, v1.7.0): append; rotate = rename to a UTC-timestamped backup
``tetragon-<2006-01-02T15-04-05.000>.log`` and create the name afresh; compress = write
``.gz.tmp``, rename it to ``.gz``, remove the plain backup; past max backups, delete the oldest.
For the export-file unit tests, the node-mode integration tests and bench/scale.py."""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path


class Lumberjack:
    def __init__(
        self, directory: Path, max_backups: int = 100, name: str = "tetragon.log", keep: bool = True
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
        self.max_backups = max_backups
        self.clock = itertools.count(1)
        #: Every line written, unless ``keep`` is off (a benchmark's millions of lines).
        self.written: list[bytes] = []
        self.keep = keep
        self.count = 0
        self.lock = threading.Lock()
        self.path.touch()

    def write(self, n: int) -> None:
        """``n`` filler lines (process_exec events, which detection passes over)."""
        self.write_lines(
            f'{{"process_exec":{{}},"n":{len(self.written) + i},"pad":"{"x" * 40}"}}'.encode()
            for i in range(n)
        )

    def write_lines(self, lines: Iterable[bytes]) -> None:
        with self.lock, self.path.open("ab") as fh:
            for line in lines:
                if self.keep:
                    self.written.append(line)
                self.count += 1
                fh.write(line + b"\n")

    def rotate(self, compress: bool = False) -> Path:
        with self.lock:
            tick = next(self.clock)
            minute, second = divmod(tick, 60)
            stamp = f"2026-11-24T10-{minute % 60:02d}-{second:02d}.{tick % 1000:03d}"
            backup = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
            os.rename(self.path, backup)
            self.path.touch()
            if compress:
                tmp = backup.with_name(backup.name + ".gz.tmp")
                with backup.open("rb") as src, gzip.open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.rename(tmp, backup.with_name(backup.name + ".gz"))
                backup.unlink()
            prefix = f"{self.path.stem}-"
            backups = sorted(p for p in self.path.parent.iterdir() if p.name.startswith(prefix))
            for old in backups[: max(0, len(backups) - self.max_backups)]:
                old.unlink()
            return backup
