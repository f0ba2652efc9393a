"""Serve the web demo of a trained experiment: upload an image, see its mask and overlay.

python scripts/serve.py --weights_path weights/unet_shapes [--host 127.0.0.1] [--port 8000]
"""

import logging
import signal
import socket
import sys


from kseg.cli import common as cli
from kseg.errors import KsegError
from kseg.runtime import RUNTIME_CHOICES

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser():
    p = cli.make_parser(__doc__)
    p.add_argument("--weights_path", default=None,
                   help="experiment folder (weights/<exp>) or a .keras file beside its config.json "
                        "(default: the most recent experiment in weights/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; the demo has no authentication, so keep it on loopback "
                        "unless you know who can reach the machine")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0 = any free port)")
    p.add_argument("--max_upload_mb", type=cli.positive_float, default=20,
                   help="largest upload accepted, in MB (larger: HTTP 413)")
    p.add_argument("--max_pixels", type=cli.positive_int, default=4096 * 4096,
                   help="largest image accepted, in pixels (larger: HTTP 413)")
    p.add_argument("--slide_above", type=int, default=1024 * 1024,
                   help="images with more pixels than this are segmented with a sliding window of the "
                        "network size (0 = always, -1 = never)")
    p.add_argument("--max_tiles", type=cli.positive_int, default=64,
                   help="work budget of one request: the most sliding windows of the network size it may "
                        "run; a larger image is predicted at a reduced size that fits, and its mask is "
                        "scaled back to the image's size")
    p.add_argument("--max_queue", type=cli.non_negative_int, default=4,
                   help="requests that may wait for the model while it is busy; one more gets HTTP 503 with "
                        "Retry-After at once")
    p.add_argument("--busy_timeout", type=cli.positive_float, default=120,
                   help="seconds a request may wait for the model before HTTP 503")
    p.add_argument("--max_results", type=cli.positive_int, default=100,
                   help="result images kept on disk (the oldest are deleted)")
    p.add_argument("--max_results_mb", type=cli.positive_float, default=500,
                   help="disk space all kept result images may take, in MB (the oldest are deleted)")
    p.add_argument("--result_ttl", type=cli.positive_float, default=60,
                   help="minutes after which result images are deleted")
    p.add_argument("--results_dir", default=None,
                   help="folder for result images (default: a temporary folder removed at exit)")
    p.add_argument("--flip", action="store_true", help="horizontal-flip test-time augmentation")
    p.add_argument("--batch_size", type=cli.positive_int, default=8,
                   help="sliding-window tiles per forward pass")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default=None,
                   help="how the .keras model runs: auto = onnxruntime on a cached, parity-checked ONNX copy "
                        "on a CPU-only machine with the export extra when it measured faster, else Keras "
                        "(default: $KSEG_RUNTIME, else auto); see kseg test --help")
    p.add_argument("--debug", action="store_true",
                   help="verbose logging and error details in the JSON answers (no interactive debugger)")
    return p


def latest_experiment(root="weights"):
    from kseg.experiment import latest_experiment as _latest

    return _latest(root)


def listen(host, port):
    """A listening socket on ``host:port``, or a one-line error (port in use, unknown host)."""
    from werkzeug.serving import get_sockaddr, select_address_family

    try:
        family = select_address_family(host, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise KsegError(f"cannot listen on {host}:{port} ({e.strerror or e}); check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise KsegError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                        "pick another --port (or --host) or stop the program using it") from None
    return sock


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.start_engine()
    if not 0 <= args.port <= 65535:
        raise KsegError(f"--port {args.port} is not a port number; use 1-65535 (or 0 for any free port)")
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from werkzeug.serving import make_server

    from kseg.serve import create_app

    weights = args.weights_path or latest_experiment()
    if args.weights_path is None:
        print(f"using the most recent experiment: {weights}", flush=True)
    sock = listen(args.host, args.port)  # fail early, before loading the model, if the port is taken
    try:
        app = create_app(weights, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                         slide_above=None if args.slide_above < 0 else args.slide_above,
                         max_tiles=args.max_tiles, max_queue=args.max_queue, busy_timeout=args.busy_timeout,
                         max_results=args.max_results, max_results_mb=args.max_results_mb,
                         result_ttl_minutes=args.result_ttl, results_dir=args.results_dir,
                         flip=args.flip, batch_size=args.batch_size, debug=args.debug, runtime=args.runtime)
        server = make_server(args.host, args.port, app, threaded=True, fd=sock.fileno())
    finally:
        sock.close()  # the server holds its own duplicate of the socket
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}, reachable from other machines; the demo has no "
              "authentication", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stop)  # a clean exit removes the temporary results folder
    host = f"[{args.host}]" if ":" in args.host else args.host
    state = app.extensions["kseg"]
    print(state.predictor.runtime_line(), flush=True)
    print(f"kseg demo: {state.model_name} ({weights}) on http://{host}:{server.port}/ "
          "(Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()  # returns on Ctrl+C (werkzeug catches KeyboardInterrupt)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
