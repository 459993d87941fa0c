"""The local push target: a directory on the machine certbroker runs on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from certbroker.deploy.files import install_files
from certbroker.domain.errors import UsageError
from certbroker.domain.targets import FileSpec, InstallResult, Target
from certbroker.ports import DeploySecrets


class LocalDeployer:
    def __init__(self, reload_timeout: float = 120.0) -> None:
        self.reload_timeout = reload_timeout

    def check(self, target: Target, secrets: DeploySecrets) -> None:
        path = Path(target.path)
        if not path.is_absolute():
            raise UsageError(f"--local {target.path!r}: give an absolute directory")
        if not path.is_dir():
            raise UsageError(
                f"--local {target.path}: there is no such directory here; create it first"
            )

    def deploy(
        self, target: Target, files: Sequence[FileSpec], secrets: DeploySecrets
    ) -> InstallResult:
        return install_files(files, target.reload, timeout=self.reload_timeout)
