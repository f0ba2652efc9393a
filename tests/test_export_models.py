"""Every registered model exports to ONNX and gives the Keras model's probabilities in onnxruntime.

Runtime: about 100 s on a lightly loaded 2-core CPU for the 19 models registered today (measured;
1-15 s per model, dominated by tf2onnx: deeplabv3plus and unet_xception_resnetblock with their
Xception encoders, enet, vggunet and fcn8 are the slowest), 3-4x longer on a heavily shared
machine. Models registered later are picked up automatically.

Each model is built at ``model_spec(name).test_size`` with ``model_spec(name).test_kwargs`` and 3
classes, exported through :func:`kseg.export.export_keras_model` (which runs its own parity check),
and its ONNX file is then run here with onnxruntime on a batch of 2 and compared with the Keras
output. A model that genuinely cannot be exported goes into ``ONNX_XFAIL`` with the reason (the
same reason as in the README's export table); the xfail is strict, so a fix shows up as a failure
to remove the entry.
"""

import keras
import numpy as np
import pytest

from kseg import export
from kseg.models import get_model, list_models, model_spec

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="export traces models with TensorFlow (KERAS_BACKEND=tensorflow)")

# name -> why it cannot be exported to ONNX (keep in sync with the README's export table). Empty today.
ONNX_XFAIL = {}


def _params():
    out = []
    for name in list_models():
        if name in ONNX_XFAIL:
            out.append(pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=ONNX_XFAIL[name])))
        else:
            out.append(name)
    return out


@pytest.mark.parametrize("name", _params())
def test_model_exports_to_onnx(name, tmp_path):
    import onnx
    import onnxruntime as ort

    spec = model_spec(name)
    h, w = spec.test_size
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = get_model(name, n_classes=3, input_height=h, input_width=w, **spec.test_kwargs)
    config = {"model_name": name, "n_classes": 3, "input_height": h, "input_width": w,
              "image_init": "divide", "resize_op": 1}
    path, report = export.export_keras_model(model, "onnx", str(tmp_path / f"{name}.onnx"), config)
    assert report["passed"], export.format_parity(report)

    proto = onnx.load(path, load_external_data=False)
    assert [i.name for i in proto.graph.input] == [export.INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [export.OUTPUT_NAME]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [h, w, 3]

    x = np.random.default_rng(1).random((2, h, w, 3), dtype=np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run([export.OUTPUT_NAME], {export.INPUT_NAME: x})[0]
    ref = keras.ops.convert_to_numpy(model(x, training=False))
    assert got.shape == ref.shape == (2, h, w, 3)
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() < 1e-3
    assert (got.argmax(-1) != ref.argmax(-1)).mean() <= 1e-3
