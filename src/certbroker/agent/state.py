"""What the agent remembers across restarts, in one small JSON file (mode 0600, written
atomically): per certificate (by its names), the broker's certificate ID, the serial
installed and its dates, and a renewed certificate held back until it is due."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Held:
    """The state of one certificate of the agent's configuration."""

    certificate_id: int | None = None
    serial: str | None = None  # installed
    not_before: str | None = None  # ... ISO dates, as the broker sent them
    not_after: str | None = None
    waiting: dict[str, Any] | None = None  # a delivery held until install time, or failed
    failures: int = 0  # installs of `waiting` that failed in a row
    retry_at: str | None = None  # ... when it is tried again (ISO)


@dataclass
class AgentState:
    path: Path
    certificates: dict[str, Held] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> AgentState:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise OSError(f"the agent's state file {path} cannot be read: {exc}") from None
        held = {ref: Held(**value) for ref, value in data.get("certificates", {}).items()}
        return cls(path, held)

    def of(self, ref: str) -> Held:
        return self.certificates.setdefault(ref, Held())

    def save(self) -> None:
        """Atomically: a temporary file, fsync, rename; 0600 (it names the key's files).
        OSError when it cannot be written (a full disk): the file as it was stays, and
        no temporary file is left."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        data = {"certificates": {ref: asdict(h) for ref, h in self.certificates.items()}}
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                # A nearly full disk takes part of a write without an error: write on
                # until all is written (or the error comes), never rename a cut file.
                view = memoryview(json.dumps(data, indent=1, sort_keys=True).encode())
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
