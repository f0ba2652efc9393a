"""A small web demo: upload an image, get its mask, overlay and per-class statistics.

Start it with ``python scripts/serve.py --weights_path weights/<exp>`` (needs the
``serve`` extra, i.e. Flask). In Python::

    from kseg.serve import create_app
    app = create_app("weights/unet_shapes")
    app.run(host="127.0.0.1", port=8000, threaded=True)
"""


def create_app(weights_path=None, **kwargs):
    """Build the Flask app for an experiment; see :func:`kseg.serve.app.create_app`."""
    from kseg.serve.app import create_app as _create_app

    return _create_app(weights_path, **kwargs)


__all__ = ["create_app"]
