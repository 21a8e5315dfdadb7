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
  same position. Inputs the model declares as sequences, optionals or maps
  are stored as ``onnx.SequenceProto`` / ``OptionalProto`` / ``MapProto``
  (``onnx.backend.test.cmd_tools`` writes them so): given the model, each
  file is decoded by its input's declared type (a list of arrays, the
  optional's value or None, a dict). Without the model a file is read as a
  TensorProto, and one that parses only as a sequence/optional (it sets
  TensorProto's ``segment`` field, which onnx cannot load) is refused with a
  message asking for the model. A backend-test directory with no
  ``input_N.pb`` but ``output_N.pb`` files is a model without inputs: ``{}``.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["read_inputs"]

_PB_NAME = re.compile(r"input_(\d+)\.pb")
_OUT_NAME = re.compile(r"output_(\d+)\.pb")
_POSITIONAL_NPZ = re.compile(r"arr_(\d+)")


def read_inputs(
    path: str | Path, model_inputs: Sequence[str] | None = None, model: onnx.ModelProto | None = None
) -> dict[str, Any]:
    """Read one set of model inputs from ``path`` (layouts in the module doc).

    Args:
        path: an ``.npz`` / ``.npy`` file, or a directory of ``input_N.pb`` files
            (or one holding ``test_data_set_0``).
        model_inputs: the model's input names in declaration order; used to name
            positional arrays (``arr_N`` keys, unnamed TensorProtos, ``.npy``).
            Taken from ``model`` when None and ``model`` is given.
        model: the model the inputs are for; its runtime inputs' declared
            types (tensor, sequence, optional, map) decide how each
            ``input_N.pb`` is decoded.

    Returns:
        ``{input name: value}`` in file order: arrays as stored (dtype and shape
        unchanged); for sequence inputs a list of arrays, for optional inputs
        the contained value or None, for map inputs a dict.

    Raises:
        InputError: the path does not exist, is not a readable npz/npy file or
            directory of TensorProto files, the ``input_N.pb`` numbering has gaps,
            names repeat, or positional data cannot be named (no
            ``model_inputs``, or more arrays than model inputs).
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"inputs path {str(p)!r} does not exist; give an .npz file or a directory of input_N.pb files")
    kinds = _input_kinds(model) if model is not None else None
    if model_inputs is None and kinds is not None:
        model_inputs = list(kinds)
    if p.is_dir():
        return _read_pb_dir(p, model_inputs, kinds)
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


def _input_kinds(model: onnx.ModelProto) -> dict[str, str]:
    """``{runtime input name: "tensor_type" | "sequence_type" | ...}`` in
    declaration order (initializer-backed graph inputs left out)."""
    initializers = {t.name for t in model.graph.initializer}
    return {vi.name: vi.type.WhichOneof("value") or "tensor_type" for vi in model.graph.input
            if vi.name not in initializers}


def _decode_pb(raw: bytes, kind: str | None, where: Path) -> tuple[Any, str | None]:
    """Decode one ``input_N.pb`` as ``kind`` (None: a TensorProto, refused
    when it is evidently a sequence/optional); returns ``(value, stored name)``."""
    if kind == "sequence_type":
        proto: Any = onnx.SequenceProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_list(proto), proto.name or None
    if kind == "optional_type":
        proto = onnx.OptionalProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_optional(proto), proto.name or None
    if kind == "map_type":
        proto = onnx.MapProto()
        proto.ParseFromString(raw)
        return numpy_helper.to_dict(proto), proto.name or None
    tensor = onnx.TensorProto()
    tensor.ParseFromString(raw)
    if tensor.HasField("segment"):
        raise InputError(
            f"{str(where)!r} is not a plain tensor (it looks like a serialized onnx.SequenceProto or "
            "OptionalProto); pass the model so that its input types decide how to read it"
        )
    return numpy_helper.to_array(tensor, base_dir=str(where.parent)), tensor.name or None


def _read_pb_dir(
    p: Path, model_inputs: Sequence[str] | None, kinds: Mapping[str, str] | None = None
) -> dict[str, Any]:
    files = {int(m.group(1)): f for f in p.iterdir() if (m := _PB_NAME.fullmatch(f.name))}
    if not files and (p / "test_data_set_0").is_dir():
        logger.info("%s: reading inputs from test_data_set_0", p)
        return _read_pb_dir(p / "test_data_set_0", model_inputs, kinds)
    if not files and (kinds == {} or any(_OUT_NAME.fullmatch(f.name) for f in p.iterdir())):
        logger.info("%s: no input_N.pb files beside the expected outputs: a model without inputs", p)
        return {}
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
    arrays: list[Any] = []
    names: list[str | None] = []
    order = list(kinds) if kinds else []
    for i in range(len(files)):
        f = files[i]
        kind = kinds.get(order[i]) if kinds and i < len(order) else None
        try:
            value, name = _decode_pb(f.read_bytes(), kind, f)
        except InputError:
            raise
        except Exception as e:  # DecodeError, OSError, unsupported data types
            what = f"onnx.{(kind or 'tensor_type').split('_')[0].title()}Proto"
            raise InputError(f"cannot read {str(f)!r} as a serialized {what}: {e}") from e
        arrays.append(value)
        names.append(name)
    return _name_positionally(arrays, names, model_inputs, str(p))


def _name_positionally(
    arrays: list[Any], names: list[str | None], model_inputs: Sequence[str] | None, where: str
) -> dict[str, Any]:
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
