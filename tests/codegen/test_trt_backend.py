"""backend.configure, the one place the flavours differ. TensorRT itself
cannot be installed here (NVIDIA's index only), so its branch is checked
against a recording stand-in of the API it calls (``create_network``,
``create_builder_config``, ``BuilderFlag``, ``set_flag``); the RTX branch
runs on the real module when it is installed."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from graphopt.codegen.tensorrt.backend import Backend, configure, load_backend
from graphopt.errors import BackendUnavailableError, InputError
from trt_helpers import needs_rtx


class _Config:
    def __init__(self) -> None:
        self.flags: list[str] = []

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)


class _Builder:
    def __init__(self) -> None:
        self.network_flags: list[int] = []

    def create_network(self, flags: int) -> str:
        self.network_flags.append(flags)
        return "network"

    def create_builder_config(self) -> _Config:
        return _Config()


TENSORRT = Backend(SimpleNamespace(BuilderFlag=SimpleNamespace(FP16="FP16", BF16="BF16", INT8="INT8", FP8="FP8")),
                   "tensorrt", "10.15.0")


def test_tensorrt_gets_precision_flags_and_a_weakly_typed_network():
    builder = _Builder()
    network, config, precision = configure(TENSORRT, builder, fp16=True, bf16=False, quantized={"int8", "int4"},
                                           compute_capabilities=None)
    assert (network, builder.network_flags) == ("network", [0])
    assert config.flags == ["FP16", "INT8"]
    assert (precision.mode, precision.flags) == ("weakly-typed", ["fp16", "int8"])


def test_tensorrt_refuses_compute_capability():
    with pytest.raises(InputError, match="--compute-capability is a TensorRT for RTX option"):
        configure(TENSORRT, _Builder(), fp16=False, bf16=False, quantized=set(), compute_capabilities=["SM86"])


def test_missing_flag_in_an_older_tensorrt_is_named():
    old = Backend(SimpleNamespace(BuilderFlag=SimpleNamespace(FP16="FP16")), "tensorrt", "8.6.1")
    with pytest.raises(InputError, match="TensorRT 8.6.1 has no BF16 builder flag"):
        configure(old, _Builder(), fp16=False, bf16=True, quantized=set(), compute_capabilities=None)


@needs_rtx
def test_rtx_is_strongly_typed_and_takes_compute_capabilities():
    backend = load_backend("tensorrt-rtx")
    trt = backend.trt
    builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    network, config, precision = configure(backend, builder, fp16=False, bf16=False, quantized={"int8"},
                                           compute_capabilities=["sm80", "SM120"])
    assert network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert [config.get_compute_capability(i) for i in range(config.num_compute_capabilities)] == [
        trt.ComputeCapability.SM80, trt.ComputeCapability.SM120]
    assert (precision.mode, precision.flags, precision.compute_capabilities) == ("strongly-typed", [],
                                                                                 ["SM80", "SM120"])


def test_load_backend_without_either_flavour(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'graphopt\[trt-rtx\]'"):
        load_backend()
    with pytest.raises(InputError, match="unknown TensorRT flavour 'trt'"):
        load_backend("trt")
