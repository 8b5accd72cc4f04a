"""A run's classifier as an ONNX graph: traced from the merged fp32 model with the temperature divided in, ONNX
Runtime's transformer fusions applied, and dynamic int8 quantisation.

Why by hand: Hugging Face Optimum's exporter, the usual route, requires transformers < 4.58 and this project runs
transformers 5. `torch.onnx.export` and ONNX Runtime's own optimiser and quantiser do the work; what is written here
is only their wiring: which inputs, which axes are dynamic, which optimiser for which architecture.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from loratune.errors import ConfigError

ONNX_EXTRA = "onnx"
OPSET = 17  # ONNX Runtime's transformer optimiser knows the LayerNormalization of opset 17


def require_onnx() -> None:
    """Raises ConfigError naming the extra when onnx or onnxruntime is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"ONNX needs the {ONNX_EXTRA!r} extra ({error.name} is not installed): "
            f"pip install 'loratune[{ONNX_EXTRA}]'."
        ) from None


class CalibratedLogits(torch.nn.Module):
    """The classifier as one function of its token tensors, in `inputs` order -> (batch, num_labels) logits / T,
    so the graph's outputs are the calibrated logits `loratune predict` turns into probabilities."""

    def __init__(self, model: Any, temperature: float, inputs: list[str]) -> None:
        super().__init__()
        self.model, self.temperature, self.inputs = model, float(temperature), inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.inputs, tensors, strict=True))).logits / self.temperature


def model_inputs(model: Any, tokenizer: Any) -> list[str]:
    """The token tensors the model takes, of those its tokenizer makes (`token_type_ids` only where both do)."""
    import inspect

    wanted = ("input_ids", "attention_mask", "token_type_ids")
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepted = set(inspect.signature(core.forward).parameters)
    made = set(tokenizer.model_input_names)
    return [name for name in wanted if name in made and (name in accepted or "kwargs" in accepted)]


def write_graph(model: Any, tokenizer: Any, temperature: float, path: Path) -> list[str]:
    """Trace `model` (fp32, eval) to `path` with dynamic batch and sequence axes; -> the graph's input names.

    The TorchScript exporter (`dynamo=False`): measured on all-MiniLM-L6-v2, ONNX Runtime's transformer optimiser
    fuses its graph's attention and layer norms, which is where the speed comes from.
    """
    inputs = model_inputs(model, tokenizer)
    sample = tokenizer(["an example text to trace the graph with", "a shorter one"], padding=True, return_tensors="pt")
    args = tuple(sample[name] for name in inputs)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes["logits"] = {0: "batch"}
    # The tracer warns of every Python branch on a shape (transformers' mask code has several); the graph is
    # checked against the PyTorch model on the run's own splits instead (`export.onnx_export.score_graphs`).
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            CalibratedLogits(model, temperature, inputs).eval(),
            args,
            str(path),
            input_names=inputs,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return inputs


# ONNX Runtime's transformer optimiser by model type: the fusions it knows for that architecture (attention, skip
# layer norm, GELU). Other architectures get ONNX Runtime's generic graph optimisations when the session loads.
_OPTIMISER_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "distilbert": "bert",
    "electra": "bert",
    "gpt2": "gpt2",
}


def optimise_graph(path: Path, config: Any) -> bool:
    """Rewrite the graph at `path` with ONNX Runtime's transformer fusions for `config.model_type`, in place;
    -> whether the architecture has them."""
    model_type = _OPTIMISER_TYPES.get(getattr(config, "model_type", ""))
    if model_type is None:
        return False
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    optimised = optimize_model(str(path), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=1)
    optimised.save_model_to_file(str(path))
    return True


def quantize_graph(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of `source`'s matrix multiplications to `target`: weights int8 once, per output
    channel, activations quantised per batch at run time (no calibration data).

    Per channel: on a MiniLM SST-2 run, one scale per weight matrix changed 6.2% of the fp32 graph's labels on the
    validation split, one per output channel 1.8%, at about the same speed and size.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The fused graph's contrib operators (Attention, SkipLayerNormalization) defeat ONNX's shape inference, which
    # the quantiser asks for each tensor's type: every tensor here is float32.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    root = logging.getLogger()  # the quantiser logs advice on the root logger ("consider pre-processing")
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True, extra_options=extra)
    finally:
        root.setLevel(level)
