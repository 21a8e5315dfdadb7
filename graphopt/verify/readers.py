"""Read model inputs from files.

Two layouts are accepted:

- a numpy ``.npz`` archive (``numpy.savez``): one array per input, keyed by
  input name; arrays saved positionally (``arr_0``, ``arr_1``, ...) are matched
  to the model's inputs in order. A single ``.npy`` array is accepted for a
  one-input model.
- a directory of serialized ``onnx.TensorProto`` files ``input_0.pb``,
  ``input_1.pb``, ... : the ONNX backend test data layout
  (``test_data_set_N/input_K.pb``, see onnx/backend/test/data). A directory
  that holds ``test_data_set_0`` instead is read from that subdirectory.
  Each tensor is named by its ``name`` field, else by the model input at the
  same position.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["read_inputs"]

_PB_NAME = re.compile(r"input_(\d+)\.pb")
_POSITIONAL_NPZ = re.compile(r"arr_(\d+)")


def read_inputs(path: str | Path, model_inputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read one set of model inputs from ``path`` (layouts in the module doc).

    Args:
        path: an ``.npz`` / ``.npy`` file, or a directory of ``input_N.pb`` files
            (or one holding ``test_data_set_0``).
        model_inputs: the model's input names in declaration order; used to name
            positional arrays (``arr_N`` keys, unnamed TensorProtos, ``.npy``).

    Returns:
        ``{input name: array}``, arrays as stored (dtype and shape unchanged), in
        file order.

    Raises:
        InputError: the path does not exist, is not a readable npz/npy file or
            directory of TensorProto files, the ``input_N.pb`` numbering has gaps,
            names repeat, or positional data cannot be named (no
            ``model_inputs``, or more arrays than model inputs).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"inputs path {str(p)!r} does not exist; give an .npz file or a directory of input_N.pb files")
    if p.is_dir():
        return _read_pb_dir(p, model_inputs)
    if p.suffix == ".npy":
        return _read_npy(p, model_inputs)
    return _read_npz(p, model_inputs)


def _read_npz(p: Path, model_inputs: Sequence[str] | None) -> dict[str, np.ndarray]:
    try:
        archive = np.load(p, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"inputs file {str(p)!r} holds a single array, not an .npz archive; name it *.npy")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(
            f"cannot read inputs file {str(p)!r} as a numpy .npz archive ({e}); "
            "write it with numpy.savez(path, name=array, ...)"
        ) from e
    if arrays and all(_POSITIONAL_NPZ.fullmatch(k) for k in arrays):
        ordered = [arrays[f"arr_{i}"] for i in range(len(arrays)) if f"arr_{i}" in arrays]
        if len(ordered) == len(arrays):
            logger.info("%s: positional arrays arr_0..arr_%d named by the model's inputs", p, len(arrays) - 1)
            return _name_positionally(ordered, [None] * len(ordered), model_inputs, str(p))
    return arrays


def _read_npy(p: Path, model_inputs: Sequence[str] | None) -> dict[str, np.ndarray]:
    try:
        array = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read inputs file {str(p)!r} as a numpy .npy array ({e})") from e
    if not model_inputs or len(model_inputs) != 1:
        raise InputError(
            f"{str(p)!r} holds a single array, which can only feed a model with exactly one input; "
            "use an .npz archive keyed by input name"
        )
    return {model_inputs[0]: array}


def _read_pb_dir(p: Path, model_inputs: Sequence[str] | None) -> dict[str, np.ndarray]:
    files = {int(m.group(1)): f for f in p.iterdir() if (m := _PB_NAME.fullmatch(f.name))}
    if not files and (p / "test_data_set_0").is_dir():
        logger.info("%s: reading inputs from test_data_set_0", p)
        return _read_pb_dir(p / "test_data_set_0", model_inputs)
    if not files:
        raise InputError(
            f"directory {str(p)!r} holds no input_N.pb files; give an .npz file or a directory laid out "
            "like the ONNX backend test data (input_0.pb, input_1.pb, ...)"
        )
    if sorted(files) != list(range(len(files))):
        raise InputError(
            f"directory {str(p)!r}: input files must be numbered input_0.pb .. input_{len(files) - 1}.pb "
            f"without gaps; found {', '.join(files[i].name for i in sorted(files))}"
        )
    arrays: list[np.ndarray] = []
    names: list[str | None] = []
    for i in range(len(files)):
        f = files[i]
        tensor = onnx.TensorProto()
        try:
            tensor.ParseFromString(f.read_bytes())
            array = numpy_helper.to_array(tensor, base_dir=str(p))
        except Exception as e:  # DecodeError, OSError, unsupported data types
            raise InputError(f"cannot read {str(f)!r} as a serialized onnx.TensorProto: {e}") from e
        arrays.append(array)
        names.append(tensor.name or None)
    return _name_positionally(arrays, names, model_inputs, str(p))


def _name_positionally(
    arrays: list[np.ndarray], names: list[str | None], model_inputs: Sequence[str] | None, where: str
) -> dict[str, np.ndarray]:
    if None in names and model_inputs is not None and len(arrays) > len(model_inputs):
        raise InputError(
            f"{where!r} holds {len(arrays)} inputs but the model has {len(model_inputs)}: {list(model_inputs)}"
        )
    out: dict[str, np.ndarray] = {}
    for i, (array, name) in enumerate(zip(arrays, names)):
        if name is None:
            if model_inputs is None:
                raise InputError(f"{where!r}: input {i} has no name and the model's input names were not given")
            name = model_inputs[i]
        if name in out:
            raise InputError(f"{where!r}: input {name!r} is given twice")
        out[name] = array
    return out
