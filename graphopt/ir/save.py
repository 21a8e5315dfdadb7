"""Writing graphopt IR models to ONNX files: atomic, streamed, never over the input.

The file layout follows the ONNX external-data spec: ``out.onnx`` holds the
graph; with external data, tensors of at least ``size_threshold`` bytes go to
``out.onnx.data`` beside it (relative ``location``, ``offset``, ``length``).
Weights that are still memory-mapped from the source model are copied from the
source file in fixed-size chunks, so peak memory stays at one chunk, not the
model's size.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import onnx_ir as ir
from graphopt.ir.edit import all_graphs

from graphopt.errors import BrokenOutputError, GraphoptError, SaveError
from graphopt.ir.check import check_model_file
from graphopt.ir.stream import write_inline
from graphopt.ir.versions import target_ir_version
from graphopt.ir.writer import model_bytes

__all__ = ["save", "to_proto", "SaveReport", "PROTOBUF_LIMIT", "EXTERNAL_DATA_AUTO_BYTES"]

_LOG = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
"""Largest serialized protobuf message (bytes): 2 GiB - 1."""

EXTERNAL_DATA_AUTO_BYTES = 1_800_000_000
"""Initializer bytes above which ``save`` switches to external data by itself,
leaving headroom under the 2 GiB protobuf limit for the graph itself."""

_CHUNK = 16 * 2**20  # bytes copied per read when streaming weights
_ALIGN = 4096  # offset alignment (bytes) of tensors over 1 MiB in the data file


@dataclass
class SaveReport:
    """What ``save`` wrote.

    Attributes:
        path: the .onnx file.
        data_path: the external-data file, or None when every tensor is inline.
        ir_version: the IR version written.
        external_tensors: number of tensors placed in external data.
        bytes_written: size of both files together (bytes).
    """

    path: Path
    data_path: Path | None
    ir_version: int
    external_tensors: int
    bytes_written: int


def _initializer_values(model: ir.Model) -> list[ir.Value]:
    """All initializer values of the main graph and its subgraphs."""
    values: list[ir.Value] = []
    for graph in all_graphs(model):
        values.extend(v for v in graph.initializers.values() if v.const_value is not None)
    return values


def _external_sources(model: ir.Model) -> set[Path]:
    """Resolved paths of the data files the model's lazy tensors read from."""
    return {
        Path(v.const_value.path).resolve()
        for v in _initializer_values(model)
        if isinstance(v.const_value, ir.ExternalTensor)
    }


def _kernel_copy(src, out, offset: int, length: int) -> int:  # noqa: ANN001 - binary file objects
    """Copy ``length`` bytes at ``offset`` of ``src`` to ``out``'s current
    position with ``os.copy_file_range``; return the bytes copied (0 when the
    call is unavailable or refused, so the caller streams the rest)."""
    if not hasattr(os, "copy_file_range"):
        return 0
    done = 0
    dst_pos = out.tell()
    try:
        while done < length:
            n = os.copy_file_range(src.fileno(), out.fileno(), length - done, offset + done, dst_pos + done)
            if n == 0:
                break
            done += n
    except OSError:
        pass
    return done


def _copy_tensor(tensor: ir.TensorProtocol, out) -> int:  # noqa: ANN001 - binary file object
    """Write a tensor's raw little-endian bytes to ``out``; return the byte count.

    External (memory-mapped) tensors are copied from their source file by the
    kernel (``os.copy_file_range``: no bytes pass through this process) or,
    where that is unavailable (other filesystems, other systems), streamed in
    ``_CHUNK`` pieces; others are written from memory.
    """
    if isinstance(tensor, ir.ExternalTensor):
        offset = tensor.offset or 0
        length = tensor.length if tensor.length is not None else tensor.nbytes
        with open(tensor.path, "rb") as src:
            out.flush()
            copied = _kernel_copy(src, out, offset, length)
            src.seek(offset + copied)
            left = length - copied
            if copied:
                out.seek(out.tell() + copied)
            while left:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise SaveError(
                        f"external data of '{tensor.name}' in '{tensor.path}' ends early; the source "
                        "data file changed or is truncated"
                    )
                out.write(chunk)
                left -= len(chunk)
        return length
    data = tensor.tobytes()
    out.write(data)
    return len(data)


_WRITEBACK_BYTES = 32 * 2**20
"""Bytes written between two requests to start the kernel's write-back."""

_sync_file_range = None  # ctypes function, False when the system has none; loaded on first use


def _start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` of ``fd`` to
    disk without waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``,
    through ctypes: the os module has no binding). Returns False where the
    call does not exist or fails; the final ``fsync`` then does all the work,
    as before."""
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _sync_file_range = fn
            except (OSError, AttributeError):
                pass
    if not _sync_file_range:
        return False
    return _sync_file_range(fd, offset, nbytes, 2) == 0  # 2: SYNC_FILE_RANGE_WRITE


class _Writeback:
    """Starts the write-back of a file being written, every ``_WRITEBACK_BYTES``,
    from a helper thread.

    ``save`` fsyncs its files before moving them into place. Without this, the
    kernel holds gigabytes of dirty pages until that fsync and then writes
    them while the caller waits (~0.9 s for 2.4 GB here). Here each written
    range is handed to ``sync_file_range`` on a helper thread (it releases the
    GIL, and submitting the I/O takes ~0.3 s per 2.4 GB that the copy need not
    wait for), so the disk writes while the next tensors are copied and the
    fsync finds little left: 2.1 s -> 1.4 s (medians) for copying and syncing
    2.4 GB on the development machine. What is on disk in the end is the same.
    Use as a context manager inside the file's ``with``: leaving it waits for
    the helper, before the file is closed.
    """

    def __init__(self, f) -> None:  # noqa: ANN001 - a binary file object
        self.f = f
        self.fd = f.fileno()
        self.start = 0  # first byte not yet handed to write-back
        self.queue: queue.SimpleQueue | None = None
        self.thread: threading.Thread | None = None
        self.ranges: list[tuple[int, int]] = []  # what was handed over, in order

    def written(self) -> None:
        """Call after each write: hands the pending bytes over once there are enough."""
        end = self.f.tell()
        if end - self.start < _WRITEBACK_BYTES:
            return
        self.f.flush()
        if self.thread is None:
            self.queue = queue.SimpleQueue()
            self.thread = threading.Thread(target=self._run, name="graphopt-writeback", daemon=True)
            self.thread.start()
        self.queue.put((self.start, end - self.start))
        self.ranges.append((self.start, end - self.start))
        self.start = end

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if not _start_writeback(self.fd, *item):
                while self.queue.get() is not None:  # unavailable: drain and stop
                    pass
                return

    def finish(self) -> None:
        """Wait until the helper has handed every range over (idempotent)."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def __enter__(self) -> "_Writeback":
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def to_proto(model: ir.Model, *, inline_external: bool = True) -> onnx.ModelProto:
    """Serialize an IR model to an ``onnx.ModelProto`` with the IR version set for
    onnxruntime (see :func:`graphopt.ir.versions.target_ir_version`).

    Args:
        model: the model; not modified.
        inline_external: read memory-mapped external tensors into the proto, so
            the proto stands alone (for onnxruntime sessions from bytes,
            onnx.checker, graphsurgeon). When False, external references keep
            their locations relative to the source model's folder.

    Raises:
        SaveError: ``inline_external`` on a model whose weights exceed the 2 GiB
            protobuf limit: save it to a file instead.
    """
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        if inline_external:
            total = sum(v.const_value.nbytes for v in _initializer_values(model))
            if total > EXTERNAL_DATA_AUTO_BYTES:
                raise SaveError(
                    f"the model's weights ({total / 2**30:.2f} GiB) do not fit in one protobuf "
                    "message; save it with graphopt.save(model, path) and use the file"
                )
            for value in _initializer_values(model):
                tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor):
                    swapped.append((value, tensor))
                    value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    proto.ir_version = target_ir_version(model.ir_version, dict(model.opset_imports))
    return proto


def _checker_error(error: Exception, source: str | None) -> GraphoptError:
    """The error for an output that fails ``onnx.checker``: when the input the
    model was loaded from passes the same check, graphopt broke it
    (:class:`BrokenOutputError`, exit 3); otherwise the input is at fault too
    (:class:`SaveError`, exit 2). The input is checked only here, on failure."""
    message = f"the output model fails onnx.checker: {error}"
    if source is None or not Path(source).is_file():
        return SaveError(message)
    try:
        check_model_file(Path(source), has_external_data=False)
    except (onnx.checker.ValidationError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return SaveError(f"{message}; the input model '{source}' fails it too ({first}): fix or re-export the input")
    return BrokenOutputError(
        f"{message}. The input model '{source}' passes the same check, so a graphopt pass made the model invalid: "
        "this is a graphopt defect; nothing was written. Rerun with --verify-each to roll the pass back (it is "
        "named in a warning), or `graphopt bisect` to find it, and please report it"
    )


def save(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    size_threshold: int = 1024,
    check: bool = False,
    validate: Callable[[Path], None] | None = None,
) -> SaveReport:
    """Write ``model`` to ``path`` atomically.

    Both files are first written into a temporary folder beside ``path`` (same
    filesystem) and fsynced (the kernel's write-back is started as the data is
    written, see ``_Writeback``), optionally checked with ``onnx.checker``
    (full check), then moved into place with ``os.replace``: data file first,
    then the .onnx file. A
    failure removes the temporary folder, so no partial file is left and an
    existing file at ``path`` is untouched.

    Args:
        model: the IR model; not modified.
        path: the output ``.onnx`` path.
        external_data: True to put every tensor of at least ``size_threshold``
            bytes into ``<name>.data`` beside the model; False to inline all;
            None (default) for external data when the input model had external
            data or the initializers exceed ``EXTERNAL_DATA_AUTO_BYTES``.
        size_threshold: smallest tensor (bytes) placed in external data.
        check: run ``onnx.checker.check_model(full_check=True)`` before the move
            (accepting onnxruntime's default-domain contrib operators, see
            :mod:`graphopt.ir.check`).
        validate: called with the temporary .onnx path (its data file beside
            it) before the move; whatever it raises aborts the save and leaves
            nothing behind (``graphopt optimize`` verifies numerics here).

    Returns:
        A :class:`SaveReport`.

    Raises:
        SaveError: the output is the input model file, its data file is one the
            model reads its weights from (the input would be overwritten), the
            folder does not exist, the model is too large to inline, the checker
            fails on a model whose input fails it too, or the write fails.
        BrokenOutputError: the checker fails on the output while the input model
            (``model.meta["graphopt.source"]``) passes it: a graphopt defect.
    """
    out = Path(path)
    if not out.parent.is_dir():
        raise SaveError(f"output folder '{out.parent}' does not exist; create it first")
    out_res = out.resolve()
    data_name = out.name + ".data"
    data_res = out_res.parent / data_name
    source = model.meta.get("graphopt.source")
    if source is not None and Path(source).resolve() == out_res:
        raise SaveError(
            f"refusing to write over the input model '{out}'; choose another output path"
        )
    sources = _external_sources(model)
    if data_res in sources or out_res in sources:
        raise SaveError(
            f"refusing to write '{out}': its external-data file '{data_name}' is the file the "
            "input model reads its weights from, which would destroy the input; choose another "
            "output name or folder"
        )
    values = _initializer_values(model)
    total = sum(v.const_value.nbytes for v in values)
    if external_data is None:
        external_data = bool(sources) or total > EXTERNAL_DATA_AUTO_BYTES
    if not external_data and total > EXTERNAL_DATA_AUTO_BYTES:
        raise SaveError(
            f"the model's weights ({total / 2**30:.2f} GiB) exceed the 2 GiB protobuf limit; "
            "save with external data"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    external_count = 0
    try:
        if external_data:
            with open(tmp / data_name, "wb") as f, _Writeback(f) as writeback:
                offset = 0
                for value in values:
                    tensor = value.const_value
                    if tensor.nbytes < size_threshold or isinstance(tensor, ir.StringTensor):
                        if isinstance(tensor, ir.ExternalTensor):
                            swapped.append((value, tensor))
                            value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
                        continue
                    if tensor.nbytes > 2**20 and offset % _ALIGN:
                        pad = _ALIGN - offset % _ALIGN
                        f.write(b"\0" * pad)
                        offset += pad
                    length = _copy_tensor(tensor, f)
                    writeback.written()
                    swapped.append((value, tensor))
                    value.const_value = ir.ExternalTensor(
                        data_name, offset, length, tensor.dtype, shape=tensor.shape,
                        name=tensor.name or value.name, base_dir=str(out_res.parent),
                    )
                    offset += length
                    external_count += 1
                f.flush()
                writeback.finish()
                os.fsync(f.fileno())
            version = target_ir_version(model.ir_version, dict(model.opset_imports))
            blob = model_bytes(model, version)
            if blob is None:  # a model the direct writer does not cover
                proto = ir.serde.serialize_model(model)
                proto.ir_version = version
                blob = proto.SerializeToString()
                del proto
            with open(tmp / out.name, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            written = len(blob)
        else:
            with open(tmp / out.name, "wb") as f, _Writeback(f) as writeback:

                def copy(tensor: ir.TensorProtocol, out) -> int:  # noqa: ANN001 - binary file object
                    length = _copy_tensor(tensor, out)
                    writeback.written()
                    return length

                written = write_inline(model, f, target_ir_version(model.ir_version, dict(model.opset_imports)), copy)
                f.flush()
                writeback.finish()
                os.fsync(f.fileno())
        if check:
            try:
                check_model_file(tmp / out.name, has_external_data=bool(external_data and external_count))
            except onnx.checker.ValidationError as e:
                raise _checker_error(e, source) from e
        if validate is not None:
            validate(tmp / out.name)
        if external_data and external_count:
            written += (tmp / data_name).stat().st_size
            os.replace(tmp / data_name, data_res)
        os.replace(tmp / out.name, out_res)
    except GraphoptError:
        raise
    except Exception as e:
        raise SaveError(f"writing '{out}' failed: {e}") from e
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
        shutil.rmtree(tmp, ignore_errors=True)
    return SaveReport(
        path=out,
        data_path=data_res if external_data and external_count else None,
        ir_version=target_ir_version(model.ir_version, dict(model.opset_imports)),
        external_tensors=external_count,
        bytes_written=written,
    )
