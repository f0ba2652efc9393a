"""Every change kseg makes to another library's internals, each one scoped to a ``with`` block.

kseg sometimes has to replace a function inside Keras (or a library Keras drives,
such as tf2onnx) because the public API offers no hook. All such patches live
here, and each is a context manager: the replacement is installed on entry and
the original put back on exit (also when the block raises), so nothing outside
the block -- eager Keras, training, other exports -- ever sees it.

* :func:`export_friendly_ops` -- Keras ``argmax``/``argmin``/``image.resize``
  traced into an export graph (SavedModel, TFLite, ONNX);
* :func:`tf2onnx_numpy2` -- Keras's numpy>=2 fixes for tf2onnx, during an ONNX
  conversion;
* :func:`multi_worker_log_reduction` -- Keras' reduction of step logs, during a
  multi-worker ``fit``; :func:`multi_worker_symbolic_build` -- one model's build
  step under a multi-worker strategy (an instance attribute of that model only).

Adding a patch: write a context manager that builds the replacement functions
and hands ``(owner, attribute, replacement)`` triples to :func:`patched`, which
does the saving and restoring (or run a third-party patching function inside
:func:`restored`, naming the attributes it changes). A patch that cannot apply
(another Keras layout, a missing optional library) yields without changing
anything. Patches are process-wide while their block runs, so they are not
meant for code that runs the patched functions on other threads meanwhile.
"""

import contextlib

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
