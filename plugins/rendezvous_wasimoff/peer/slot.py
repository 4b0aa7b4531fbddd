"""One worker slot of the Python provider: a wasmtime engine that runs WASI binaries.

Each slot has its own Engine with epoch interruption, so a ``Task.Cancel`` interrupts exactly
that slot's task (the real provider likewise kills and respawns the worker).
"""

from __future__ import annotations

import io
import pathlib
import tempfile
import zipfile
from typing import Any, cast


class Cancelled(Exception):
    pass


class WasmSlot:
    def __init__(self) -> None:
        import wasmtime

        config = wasmtime.Config()
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.modules: dict[str, Any] = {}
        self.task_id: str | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.engine.increment_epoch()

    def run(self, ref: str, wasm: bytes, args: list[str], envs: list[str], stdin: bytes, rootfs: bytes | None,
            artifacts: list[str]) -> tuple[int, bytes, bytes, bytes | None]:
        import wasmtime

        module = self.modules.get(ref)
        if module is None:
            module = self.modules[ref] = wasmtime.Module(self.engine, wasm)
        with tempfile.TemporaryDirectory(prefix="wasimoff-") as tmp:
            tmpdir = pathlib.Path(tmp)
            (tmpdir / "stdin").write_bytes(stdin)
            wasi = wasmtime.WasiConfig()
            wasi.argv = args
            wasi.env = [tuple(e.split("=", 1)) if "=" in e else (e, "") for e in envs]
            wasi.stdin_file = str(tmpdir / "stdin")
            wasi.stdout_file = str(tmpdir / "stdout")
            wasi.stderr_file = str(tmpdir / "stderr")
            root = tmpdir / "root"
            if rootfs is not None:
                root.mkdir()
                with zipfile.ZipFile(io.BytesIO(rootfs)) as z:
                    for member in z.namelist():  # refuse paths that escape the root
                        if member.startswith("/") or ".." in pathlib.PurePosixPath(member).parts:
                            raise ValueError(f"rootfs: unsafe path {member!r}")
                    z.extractall(root)
                wasi.preopen_dir(str(root), "/")
            store = wasmtime.Store(self.engine)
            store.set_epoch_deadline(1)
            # A cancel that came before the deadline was armed would never trap: check after arming.
            if self.cancelled:
                raise Cancelled()
            store.set_wasi(wasi)
            linker = wasmtime.Linker(self.engine)
            linker.define_wasi()
            status = 0
            try:
                instance = linker.instantiate(store, module)
                cast("wasmtime.Func", instance.exports(store)["_start"])(store)
            except wasmtime.ExitTrap as exc:
                status = exc.code
            except wasmtime.Trap:
                if self.cancelled:
                    raise Cancelled() from None
                raise
            stdout = (tmpdir / "stdout").read_bytes() if (tmpdir / "stdout").exists() else b""
            stderr = (tmpdir / "stderr").read_bytes() if (tmpdir / "stderr").exists() else b""
            packed = None
            if artifacts and rootfs is not None:
                buffer = io.BytesIO()
                with zipfile.ZipFile(buffer, "w") as z:
                    for name in artifacts:
                        path = root / name.lstrip("/")
                        if path.is_file():
                            z.write(path, name.lstrip("/"))
                packed = buffer.getvalue()
            return status, stdout, stderr, packed
