"""``--dim``/``--shape``/``--value``/``--inputs`` on a streaming-audio model
whose inputs have unnamed dims (issue 20, item 4), and the position-table
limit of ``--dim sequence`` (item 7f).

The model (tests/cli/audio_model.py) rejects the default generated inputs in
onnxruntime (a 64-tap Conv over a length-1 signal); graphopt must grow the
free dims until the original runs, take whole shapes and fill values, refuse
names the model does not have before any pass runs, and exit 2 (nothing
written) when the original runs on nothing it tried.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from audio_model import audio_model
from conftest import MODELS
from graphopt import ir
from graphopt.errors import InputError
from graphopt.passmanager import ModelRunner
from graphopt.verify import generate_inputs, run_model
from graphopt.verify.feed import GROWTH, InputRequest, check_request, runnable_inputs
from graphopt.verify.inputs import Growth
from helpers import flat, restore_logging, run_cli  # noqa: F401 - autouse fixture

INPUTS_TEXT = "input: float[?, ?], state: float[2, ?, 128], sr: int64[]"


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    path = tmp_path / "audio.onnx"
    onnx.save(audio_model(), path)
    return path


def test_original_rejects_the_default_inputs():
    """The premise: the default generated inputs (a length-1 signal) fail in onnxruntime."""
    feed = generate_inputs(audio_model())
    assert {k: v.shape for k, v in feed.items()} == {"input": (1, 1), "state": (2, 1, 128), "sr": ()}
    with pytest.raises(Exception, match="Invalid input shape"):
        run_model(audio_model(), feed)


def test_runnable_inputs_grows_free_dims_until_the_original_runs():
    feed = runnable_inputs(audio_model())
    assert feed.grow == Growth(1, 64)  # batch-like dims (axis 0, the state's only dynamic axis) stay 1
    assert {k: v.shape for k, v in feed.inputs.items()} == {"input": (1, 64), "state": (2, 1, 128), "sr": ()}
    assert set(feed.outputs) == {"out", "new_state"}
    assert GROWTH[0] == Growth(1, 16)


def test_shape_and_value_fix_the_inputs_and_pick_the_branch():
    feed = runnable_inputs(audio_model(), InputRequest(shapes={"input": (1, 512)}, values={"sr": 16000}))
    assert feed.grow is None
    assert feed.inputs["input"].shape == (1, 512) and feed.inputs["state"].shape == (2, 1, 128)
    assert feed.inputs["sr"].dtype == np.int64 and int(feed.inputs["sr"]) == 16000
    other = run_model(audio_model(), {**feed.inputs, "sr": np.array(8000, dtype=np.int64)})
    np.testing.assert_allclose(feed.outputs["out"], -2 * other["out"], rtol=1e-6)  # then: x2, else: negate


def test_sample_keeps_shapes_and_values_and_redraws_the_rest():
    feed = runnable_inputs(audio_model(), InputRequest(values={"sr": 16000}))
    again = feed.sample(7)
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in feed.inputs.items()}
    assert int(again["sr"]) == 16000
    assert not np.array_equal(again["input"], feed.inputs["input"])


def test_model_runner_grows_on_first_run_and_keeps_the_feed(audio):
    runner = ModelRunner(values={"sr": 16000})
    first = runner.run(ir.load(audio))  # the first run resolves the inputs on the original
    assert runner.inputs["input"].shape == (1, 64) and int(runner.inputs["sr"]) == 16000
    second = runner.run(ir.load(audio))
    np.testing.assert_array_equal(first["out"], second["out"])


def test_partial_inputs_are_completed():
    arrays = {"sr": np.array(16000, dtype=np.int64), "input": np.ones((1, 100), dtype=np.float32)}
    feed = runnable_inputs(audio_model(), InputRequest(arrays=arrays))
    assert feed.generated == ("state",)
    assert feed.inputs["input"] is arrays["input"] and feed.inputs["state"].shape == (2, 1, 128)


@pytest.mark.parametrize(("request_", "message"), [
    (InputRequest(dims={"samples": 512}),
     "dims ['samples'] name no dim of the model's inputs; the model's dim names are: none (their dynamic dims are "
     "unnamed); size an unnamed dim by giving its input's whole shape (--shape INPUT=AxB; shapes= in Python). "
     f"The inputs: {INPUTS_TEXT}"),
    (InputRequest(shapes={"inputs": (1, 512)}),
     f"--shape names 'inputs', which is not an input of the model (did you mean 'input'?); its inputs are: "
     f"{INPUTS_TEXT}"),
    (InputRequest(values={"fs": 16000}),
     f"--value names 'fs', which is not an input of the model; its inputs are: {INPUTS_TEXT}"),
    (InputRequest(shapes={"input": (512,)}),
     "--shape gives 'input' rank 1 [512], but the input has rank 2: float[?, ?]"),
    (InputRequest(shapes={"state": (2, 1, 64)}),
     "--shape gives axis 2 of 'state' size 64, but the model fixes it to 128: float[2, ?, 128]"),
    (InputRequest(values={"sr": 1.5}),
     "--value sr=1.5: the input is int64[], an integer input; give an integer"),
    (InputRequest(shapes={"sr": ()}, arrays={"sr": np.array(1, dtype=np.int64)}),
     "input 'sr' is given by --inputs and by --shape/--value; give it once"),
])
def test_check_request_refuses(request_, message):
    with pytest.raises(InputError) as e:
        check_request(audio_model(), request_)
    assert str(e.value) == message


def test_too_short_fixed_shape_exits_with_the_hint():
    with pytest.raises(InputError) as e:
        runnable_inputs(audio_model(), InputRequest(shapes={"input": (1, 16)}))
    text = str(e.value)
    assert text.startswith("the original model <ModelProto> fails in onnxruntime on generated inputs with "
                           "--shape input=1x16 (tried ")
    assert "Invalid input shape" in text
    assert ("give input shapes with --shape NAME=1x512, set scalar inputs with --value NAME=VALUE (e.g. a sample "
            "rate), or pass real inputs with --inputs FILE.npz") in text


# ---------------------------------------------------------------------------
# the CLI


def test_optimize_plain_grows_and_writes(audio, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", audio, "-o", out)
    assert code == 0, stderr
    assert out.is_file()
    assert ("the model fails on inputs of the default sizes (input: float32[1, 1], state: float32[2, 1, 128], sr: "
            "int64[]); using input: float32[1, 64], state: float32[2, 1, 128], sr: int64[]") in flat(stderr)


def test_optimize_with_shape_and_value(audio, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", audio, "-o", out, "--shape", "input=1x512",
                                   "--value", "sr=16000", "--json")
    assert code == 0, stderr
    assert out.is_file()
    doc = json.loads(stdout)
    assert doc["verify"]["inputs"] == {"input": "float32[1, 512]", "state": "float32[2, 1, 128]", "sr": "int64[]"}
    assert "default sizes" not in stderr


def test_optimize_original_fails_exits_2_nothing_written(audio, tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", audio, "-o", out, "--shape", "input=1x8")
    assert code == 2
    text = flat(stderr)
    assert text.startswith(f"error: the original model {audio} fails in onnxruntime on generated inputs with "
                           "--shape input=1x8")
    assert "--shape NAME=1x512" in text and "--value NAME=VALUE" in text and "--inputs FILE.npz" in text
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == [audio]


@pytest.mark.parametrize(("option", "message"), [
    (["--dim", "samples=512"], "error: dims ['samples'] name no dim of the model's inputs; the model's dim names "
                               "are: none (their dynamic dims are unnamed)"),
    (["--shape", "signal=1x512"], "error: --shape names 'signal', which is not an input of the model; its inputs "
                                  f"are: {INPUTS_TEXT}"),
    (["--value", "fs=16000"], "error: --value names 'fs', which is not an input of the model; its inputs are: "
                                f"{INPUTS_TEXT}"),
    (["--shape", "input=1xa"], "error: --shape expects INPUT=SHAPE with dims joined by x (e.g. --shape "
                               "input=1x512; INPUT= for a scalar), got 'input=1xa'"),
    (["--value", "sr=fast"], "error: --value expects INPUT=NUMBER (e.g. --value sr=16000; true/false for bool "
                             "inputs), got 'sr=fast'"),
])
@pytest.mark.parametrize("command", ["optimize", "bisect", "verify", "bench", "quantize", "inspect"])
def test_wrong_names_exit_2_before_any_pass(command, option, message, audio, tmp_path, capsys, monkeypatch):
    if command == "inspect" and option[0] == "--value":
        pytest.skip("inspect takes --dim and --shape only")
    import graphopt.passmanager.manager as manager

    def no_pipeline(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the pipeline ran")

    monkeypatch.setattr(manager.PassManager, "run", no_pipeline)
    out = tmp_path / "out.onnx"
    argv = {
        "optimize": ["optimize", audio, "-o", out], "bisect": ["bisect", audio], "verify": ["verify", audio, audio],
        "bench": ["bench", audio, "--runs", "1"], "quantize": ["quantize", audio, "-o", out, "--calib", "generate"],
        "inspect": ["inspect", audio],
    }[command]
    code, stdout, stderr = run_cli(capsys, *argv, *option)
    assert code == 2, stderr
    assert flat(stderr).startswith(message)
    assert "Traceback" not in stderr
    assert not out.exists()


def test_verify_and_bench_take_shape_and_value(audio, capsys):
    code, stdout, stderr = run_cli(capsys, "verify", audio, audio, "--shape", "input=1x256", "--value", "sr=16000",
                                   "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["inputs"] == {"input": "float32[1, 256]", "state": "float32[2, 1, 128]",
                                            "sr": "int64[]"}
    code, stdout, stderr = run_cli(capsys, "bench", audio, "--runs", "1", "--warmup", "0", "--shape", "input=2x128",
                                   "--shape", "state=2x2x128", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["inputs"] == {"input": [2, 128], "state": [2, 2, 128], "sr": []}


def test_inputs_file_may_give_some_inputs(audio, tmp_path, capsys):
    npz = tmp_path / "some.npz"
    np.savez(npz, sr=np.array(16000, dtype=np.int64), input=np.ones((1, 300), dtype=np.float32))
    code, stdout, stderr = run_cli(capsys, "verify", audio, audio, "--inputs", npz, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["inputs"] == {"input": "float32[1, 300]", "state": "float32[2, 1, 128]",
                                            "sr": "int64[]"}


def test_dim_past_the_position_table_exits_2_before_running(tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", MODELS / "bert_tiny_ts.onnx", "-o", out,
                                   "--dim", "sequence=200")
    assert code == 2
    assert flat(stderr) == ("error: --dim sequence=200 asks for 200 positions, but the model has a position table "
                            "of 128 rows (inner.embeddings.position_embeddings.weight): it runs sequences of at most "
                            "128; use sequence=128 or less")
    assert not out.exists()
    code, stdout, stderr = run_cli(capsys, "verify", MODELS / "gpt2_tiny_ts.onnx", MODELS / "gpt2_tiny_ts.onnx",
                                   "--shape", "input_ids=1x129")
    assert code == 2
    assert flat(stderr).startswith("error: --shape input_ids asks for 129 positions, but the model has a position "
                                   "table of 128 rows (inner.transformer.wpe.weight)")


def test_bisect_and_verify_each_grow_the_inputs(audio, tmp_path, capsys):
    code, stdout, stderr = run_cli(capsys, "bisect", audio, "-p", "O2")
    assert code == 0, stderr
    assert "no divergence" in stdout
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", audio, "-o", out, "--verify-each", "--value", "sr=16000")
    assert code == 0, stderr
    assert out.is_file()


def test_a_too_long_sequence_the_table_check_misses_says_so(tmp_path):
    """A model whose position table the name rules do not find: onnxruntime's
    failure on the original becomes exit 2 with the limit hint."""
    proto = onnx.load(str(MODELS / "bert_tiny_ts.onnx"))
    for t in proto.graph.initializer:
        if t.name == "inner.embeddings.position_embeddings.weight":
            t.name = "table_p"
    for node in proto.graph.node:
        node.input[:] = ["table_p" if n == "inner.embeddings.position_embeddings.weight" else n for n in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(proto, path)
    with pytest.raises(InputError) as e:
        runnable_inputs(path, InputRequest(dims={"sequence": 200, "batch": 1}))
    text = str(e.value)
    assert text.startswith(f"the original model {path} fails in onnxruntime on generated inputs with --dim "
                           "sequence=200 --dim batch=1 (tried input_ids: int64[1, 200], attention_mask: int64[1, 200], "
                           "token_type_ids: int64[1, 200]): ")
    assert ("If sequence=200 is past what the model supports (a position table or a fixed window), use a smaller "
            "size. graphopt cannot tell") in text


def test_a_misspelt_dim_is_named_with_the_close_match(tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", MODELS / "bert_tiny_ts.onnx", "-o", out, "--dim", "sequnce=64")
    assert code == 2
    assert flat(stderr) == ("error: dims ['sequnce'] name no dim of the model's inputs; the model's dim names are: "
                            "batch, sequence (did you mean 'sequence'?)")
    assert not out.exists()


def test_engine_shapes_without_engine_points_to_shape(tmp_path, capsys):
    out = tmp_path / "opt.onnx"
    code, stdout, stderr = run_cli(capsys, "optimize", MODELS / "bert_tiny_ts.onnx", "-o", out,
                                   "--shapes", "input_ids=1x32")
    assert code == 2
    assert flat(stderr) == ("error: --shapes configure a TensorRT engine; add --engine OUT.engine (to size the "
                            "inputs verification runs on, use --shape INPUT=AxB)")
    assert not out.exists()
