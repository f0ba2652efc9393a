"""Every change kseg makes to another library's internals, each one scoped to a ``with`` block.

kseg sometimes has to replace a function inside Keras (or a library Keras drives,
such as tf2onnx) because the public API offers no hook. All such patches live
here, and each is a context manager: the replacement is installed on entry and
the original put back on exit (also when the block raises), so nothing outside
the block -- eager Keras, training, other exports -- ever sees it.

* :func:`export_friendly_ops` -- Keras ``argmax``/``argmin``/``image.resize``
  traced into an export graph (SavedModel, TFLite, ONNX);
* :func:`tf2onnx_numpy2` -- Keras's numpy>=2 fixes for tf2onnx, during an ONNX
  conversion; :func:`tf2onnx_low_memory` -- tf2onnx's freezing, optimizer loop and
  ``Node.update_proto`` without their ever-growing copies of the weights;
* :func:`multi_worker_log_reduction` -- Keras' reduction of step logs, during a
  multi-worker ``fit``; :func:`multi_worker_symbolic_build` -- one model's build
  step under a multi-worker strategy (an instance attribute of that model only);
* :func:`direct_dilated_convolutions` -- Keras' TensorFlow ``conv`` with a dilation
  rate, while kseg trains, predicts or benchmarks: one dilated convolution op instead of
  TensorFlow's SpaceToBatch detour.

Adding a patch: write a context manager that builds the replacement functions
and hands ``(owner, attribute, replacement)`` triples to :func:`patched`, which
does the saving and restoring (or run a third-party patching function inside
:func:`restored`, naming the attributes it changes). A patch that cannot apply
(another Keras layout, a missing optional library) yields without changing
anything. Patches are process-wide while their block runs, so they are not
meant for code that runs the patched functions on other threads meanwhile.
"""

import contextlib
import functools

_MISSING = object()


@contextlib.contextmanager
def restored(*attributes):
    """Put each ``(owner, attribute)`` back as it was on entry, whatever the block does to it.

    The value found in the owner's own ``__dict__`` is put back; an attribute the
    owner did not have itself (inherited from a class, or served by a module
    ``__getattr__``) is deleted again. Restoring happens also when the block raises.
    """
    saved = [(owner, name, vars(owner).get(name, _MISSING)) for owner, name in attributes]
    try:
        yield
    finally:
        for owner, name, old in reversed(saved):
            if old is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, old)


@contextlib.contextmanager
def patched(*patches):
    """Set ``owner.attribute = replacement`` for each triple in ``patches`` for the block only."""
    with restored(*[(owner, name) for owner, name, _ in patches]):
        for owner, name, value in patches:
            setattr(owner, name, value)
        yield


@contextlib.contextmanager
def export_friendly_ops():
    """Patch two Keras 3 TensorFlow-backend ops while an export graph is traced.

    * ``keras.ops.argmax``/``argmin`` of floats: Keras wraps them in a -0.0 fix
      that bit-casts the tensor to int32 (``signbit``); neither ONNX nor the
      TFLite builtins have that op, which made ``MaxPoolingWithArgmax2D`` (SegNet,
      ENet) unexportable. Traced here as a plain ``tf.argmax``; only a tie
      between -0.0 and +0.0 can resolve differently.
    * ``keras.ops.image.resize`` with a size that is a tensor (a dynamic
      height/width, as in ``ResizeLike`` or a bilinear ``UpSampling2D`` traced
      with ``None`` sizes): its argument check ``size[0] <= 0`` is a Python
      ``bool`` of a symbolic tensor and fails in graph mode. Such calls go
      straight to the backend resize, which takes tensor sizes.

    Used by :mod:`kseg.export.writers` around tracing only; eager Keras is untouched.
    """
    try:
        import tensorflow as tf
        from keras import ops as public_ops
        from keras.src import backend as kbackend
        from keras.src import ops as src_ops
        from keras.src.backend.tensorflow import numpy as tfnp
    except ImportError:  # pragma: no cover - other Keras layouts: trace as is
        yield
        return

    def plain(tf_fn):
        def fn(x, axis=None, keepdims=False):
            x = tf.convert_to_tensor(x)
            y = tf_fn(tf.reshape(x, [-1]) if axis is None else x, axis=0 if axis is None else axis,
                      output_type=tf.int32)
            if keepdims:
                if axis is None:
                    y = tf.reshape(y, [1] * len(x.shape))
                else:
                    y = tf.expand_dims(y, axis)
            return y

        return fn

    original_resize = src_ops.image.resize

    def resize(images, size, interpolation="bilinear", antialias=False, **kwargs):
        if any(isinstance(v, tf.Tensor) for v in size) and not any(kwargs.get(k) for k in (
                "crop_to_aspect_ratio", "pad_to_aspect_ratio")):
            return kbackend.image.resize(images, tuple(size), interpolation=interpolation, antialias=antialias,
                                         data_format=kwargs.get("data_format"))
        return original_resize(images, size, interpolation=interpolation, antialias=antialias, **kwargs)

    candidates = [(tfnp, "argmax", plain(tf.argmax)), (tfnp, "argmin", plain(tf.argmin)),
                  (src_ops.image, "resize", resize), (public_ops.image, "resize", resize)]
    with patched(*[(owner, name, fn) for owner, name, fn in candidates if hasattr(owner, name)]):
        yield


@contextlib.contextmanager
def tf2onnx_numpy2():
    """Keras's numpy>=2 compatibility fixes for tf2onnx, for the duration of a conversion.

    ``keras.src.export.tf2onnx_lib.patch_tf2onnx`` replaces tf2onnx's constant
    folding and ``Node.get_value_attr`` and defines ``np.object``, permanently
    and once per process (it is cached). Here the uncached function is run
    inside :func:`restored`, so those three attributes are put back on exit.
    """
    import warnings

    try:
        with warnings.catch_warnings():  # their import-time Future/DeprecationWarnings are not the user's
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import numpy as np
            import tf2onnx.graph
            import tf2onnx.tfonnx
            from keras.src.export.tf2onnx_lib import patch_tf2onnx
    except ImportError:  # pragma: no cover - no tf2onnx, or a Keras without the fixes
        yield
        return
    install = getattr(patch_tf2onnx, "__wrapped__", patch_tf2onnx)  # past the once-per-process cache
    with restored((np, "object"), (tf2onnx.tfonnx, "rewrite_constant_fold"), (tf2onnx.graph.Node, "get_value_attr")):
        install()
        yield


@contextlib.contextmanager
def tf2onnx_low_memory():
    """Keep tf2onnx's memory to about one copy of the weights after freezing, for a conversion.

    Measured on deeplabv3plus (ResNet50, 25.5M parameters, ~100 MB of weights): tf2onnx's ONNX
    optimizer loop took a process from 2.3 to 7.5 GB, ~0.2 GB more for each of its 24 optimizer
    passes, and nothing of it was freed before the conversion ended (now: peak 2.5 GB, and the
    conversion is faster). Three patches, none of which changes the ONNX graph that is written:

    * ``tf2onnx.optimizer.optimize_graph`` deep-copies the whole graph before every pass (so a
      pass that raises can be skipped) and drops the previous copy. A tf2onnx graph is full of
      reference cycles (node <-> graph), so each dropped copy, weights included, waits for a
      full ``gc`` collection, which a process holding TensorFlow's millions of objects rarely
      gets. Here the passes run in place on the graph, as tf2onnx itself does when it is told
      not to catch errors; only if a pass raises is tf2onnx's own copying loop run again from a
      copy taken before the first pass, giving exactly tf2onnx's result (a pass skipped).
    * ``Node.update_proto`` (run for every node after every pass) clears the node's
      ``NodeProto`` attributes and appends them again. With the upb protobuf runtime a message
      lives in an arena that never shrinks while the message lives, so every call added another
      copy of each node's tensors (the weights). Here each call writes into a fresh
      ``NodeProto`` (the old one and its arena are freed), and the node's attribute objects are
      re-pointed at the new proto's identical ones so that the old arena has no users left.
    * before the ONNX side starts, ``tf2onnx.tf_loader.from_function`` (freeze the function,
      then grappler) kept the frozen ``ConcreteFunction`` (its graph holds every weight as a
      constant, in cycles again) alive through grappler; here the same steps run with the same
      arguments, but the frozen function is dropped and collected once its ``GraphDef`` is
      taken (deeplabv3plus: 3.16 -> 2.5 GB). Large-model conversions and the freezes that
      tf2onnx has to repair go to tf2onnx's own function.
    """
    try:
        import copy
        import gc

        import onnx
        import tensorflow as tf
        import tf2onnx.graph
        import tf2onnx.optimizer
        import tf2onnx.tf_loader as loader
    except ImportError:  # pragma: no cover - no tf2onnx
        yield
        return
    node_cls = tf2onnx.graph.Node
    original_update = getattr(node_cls, "update_proto", None)
    original_optimize = getattr(tf2onnx.optimizer, "optimize_graph", None)
    original_freeze = getattr(loader, "from_function", None)
    needed = ("convert_variables_to_constants_v2", "fix_freezing_errors_part2", "tf_session",
              "inputs_without_resource", "tf_optimize")
    if original_update is None or original_optimize is None or original_freeze is None or not all(
            hasattr(loader, name) for name in needed):
        yield  # pragma: no cover - another tf2onnx layout: convert as is
        return

    def from_function(func, input_names, output_names, large_model=False):
        if large_model:
            return original_freeze(func, input_names, output_names, large_model)
        try:
            frozen = loader.convert_variables_to_constants_v2(func, lower_control_flow=False,
                                                              aggressive_inlining=True)
        except ValueError:  # tf2onnx knows a repair for some of these
            return original_freeze(func, input_names, output_names, large_model)
        graph_def = frozen.graph.as_graph_def(add_shapes=True)
        del frozen
        gc.collect()
        graph_def = loader.fix_freezing_errors_part2(graph_def)
        tf_graph = tf.Graph()
        with tf_graph.as_default(), loader.tf_session(graph=tf_graph) as sess:
            tf.import_graph_def(graph_def, name="")
            input_names = loader.inputs_without_resource(sess, input_names)
        with tf.Graph().as_default():
            return loader.tf_optimize(input_names, output_names, graph_def)

    def update_proto(self, external_tensor_storage=None):
        old = self._op
        if not isinstance(old, onnx.NodeProto) or not isinstance(getattr(self, "_attr", None), dict):
            return original_update(self, external_tensor_storage)  # pragma: no cover
        del old.attribute[:]  # as tf2onnx does; the attribute objects in self._attr stay valid
        fresh = onnx.NodeProto()
        fresh.CopyFrom(old)  # name, op_type, domain, inputs, outputs ... (no attributes left)
        self._op = fresh
        original_update(self, external_tensor_storage)
        for a in fresh.attribute:
            mine = self._attr.get(a.name)
            if mine is not None and mine is not a and mine == a:
                self._attr[a.name] = a

    def optimize_graph(graph, catch_errors=True, optimizers=None):
        if not catch_errors:
            return original_optimize(graph, catch_errors, optimizers)
        backup = copy.deepcopy(graph)
        try:
            return original_optimize(graph, False, optimizers)
        except Exception:  # a pass failed: redo it tf2onnx's way, which skips the failing pass
            return original_optimize(backup, True, optimizers)

    with patched((node_cls, "update_proto", update_proto), (tf2onnx.optimizer, "optimize_graph", optimize_graph),
                 (loader, "from_function", from_function)):
        yield


@contextlib.contextmanager
def multi_worker_log_reduction():
    """Keras reduces the scalar step logs of a multi-worker run with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on a scalar; inside this block
    rank-0 values of ``MultiWorkerMirroredStrategy`` reductions use ``axis=None``.
    Everything else goes to Keras's own ``reduce_per_replica``."""
    try:
        import keras
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        yield
        return
    original = getattr(tf_trainer, "reduce_per_replica", None)
    is_multi = getattr(tf_trainer, "_collective_all_reduce_multi_worker", None)
    if original is None or is_multi is None:
        yield
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi(strategy):
            def _reduce(v):
                local = strategy.experimental_local_results(v)
                if local and len(getattr(local[0], "shape", ())) == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original(v, strategy, reduction)

            return keras.tree.map_structure(_reduce, values)
        return original(values, strategy, reduction)

    with patched((tf_trainer, "reduce_per_replica", reduce_per_replica)):
        yield


def multi_worker_symbolic_build(model, strategy):
    """Give ``model`` (this instance only) a build step that works under ``strategy``.

    Keras builds metrics and optimizer from one batch that it first reduces with
    ``strategy.reduce("MEAN", batch)``, which ``MultiWorkerMirroredStrategy`` cannot do
    for an ``(images, labels)`` batch; only shapes and dtypes are needed, so this
    worker's first local replica batch is used instead. A no-op when Keras lacks
    the hook.
    """
    if not hasattr(model, "_maybe_symbolic_build"):
        return model
    import types

    import keras
    import tensorflow as tf

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = keras.tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    batch,
                )
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(_maybe_symbolic_build, model)
    return model


@functools.lru_cache(maxsize=None)
def _dilated_ops_run_here():
    """Whether TensorFlow runs ``Conv2D`` with a dilation and its gradients on the default
    device (a tiny eager probe, once per process; call it only while executing eagerly): oneDNN's
    CPU kernels and the GPU's do; TensorFlow's own CPU kernels without oneDNN
    (``TF_ENABLE_ONEDNN_OPTS=0``) refuse the gradients."""
    import tensorflow as tf

    try:
        x = tf.ones((1, 5, 5, 2))
        k = tf.ones((3, 3, 2, 2))
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            loss = tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME", dilations=2))
        for g in tape.gradient(loss, [x, k]):
            g.numpy()
        return True
    except Exception:  # noqa: BLE001 - any refusal means: keep Keras' own path
        return False


@contextlib.contextmanager
def direct_dilated_convolutions():
    """Run dilated 2-D convolutions as one TensorFlow op while the block runs.

    Keras' TensorFlow backend calls ``tf.nn.convolution``, which runs a dilated
    convolution as ``SpaceToBatchND`` -> convolution -> ``BatchToSpaceND``; the padded
    batch-of-phases copies dominate the step of a dilated network on a CPU. ``Conv2D``
    takes the dilation as an attribute, and oneDNN (TensorFlow's default CPU kernels on
    x86) and cuDNN run it directly: measured on a 2-core AMD EPYC, a 3x3 convolution at rate 12 from 2048 to
    256 channels on a 4x14x14 batch, forward and backward, 3.9 s -> 0.28 s in float32 and
    2.6 s -> 0.15 s in bfloat16 (``docs/performance.md``). The same arithmetic, so the
    outputs agree to float rounding (``tests/test_compat.py``).

    Only 4-D ``channels_last`` inputs with stride 1, no groups and a dilation above 1 are
    redirected. Depthwise convolutions keep Keras' path: TensorFlow 2.21's gradient of
    ``DepthwiseConv2dNative`` ignores its ``dilations`` (input and filter gradients off by
    10-25% in a check against ``tf.nn.depthwise_conv2d``), which is why TensorFlow itself
    routes dilated depthwise convolutions through SpaceToBatch; everything else, and every call where the probe
    (:func:`_dilated_ops_run_here`) found the direct ops unsupported, keeps Keras' own
    path. Functions traced inside the block keep the direct ops; kseg enters it around
    ``fit`` (:func:`kseg.distribute.fit_context`), Keras prediction
    (:func:`kseg.runtime.keras_runner`) and the benchmark's steps.
    """
    try:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ImportError
        import tensorflow as tf
        from keras.src.backend.tensorflow import nn as tfnn
    except ImportError:
        yield
        return
    # the probe runs eagerly (a block entered while a function is traced keeps Keras' path)
    if not tf.executing_eagerly() or not _dilated_ops_run_here():
        yield
        return
    original_conv = tfnn.conv

    def _pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    def _direct(inputs, strides, data_format, dilation_rate):
        return (len(inputs.shape) == 4 and (data_format or keras.config.image_data_format()) == "channels_last"
                and _pair(strides) == (1, 1) and max(_pair(dilation_rate)) > 1)

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        if _direct(inputs, strides, data_format, dilation_rate) and inputs.shape[-1] == kernel.shape[-2]:
            return tf.nn.conv2d(inputs, kernel, 1, padding.upper(), dilations=_pair(dilation_rate))
        return original_conv(inputs, kernel, strides, padding, data_format, dilation_rate)

    with patched((tfnn, "conv", conv)):
        yield
