"""`dvd-ros run`: the depth node(s) in one process, for machines without `ros2 launch`.

One depth node per namespace (one per camera), optionally each with a synthetic camera, all in
one MultiThreadedExecutor. Topics, parameters and QoS are those of ``ros2 launch dvd_ros
depth.launch.py``.
"""

from dvd_ros.cli.main import CliError


def add_parser(subparsers):
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        'run', help='start the depth node(s) in one process (no ros2 launch needed)',
        description='Start one depth node per namespace in one process (MultiThreadedExecutor). '
                    'Ctrl-C stops it cleanly.')
    parser.add_argument('--params-file', metavar='YAML',
                        help='ROS parameter file (e.g. config/depth.yaml), applied to every node')
    parser.add_argument('--weights', metavar='PATH',
                        help='DVD weights (release .safetensors or converted folder); default: '
                             'the embedded tiny model')
    parser.add_argument('--backend', metavar='NAME',
                        help='execution backend (torch, torch-compile, onnxruntime, tensorrt; '
                             'stand-in = fast fake model for tests)')
    parser.add_argument('--namespace', '-n', action='append', metavar='NS', default=None,
                        help='camera namespace; repeat for several cameras (default: none). '
                             'The node in NS subscribes NS/image and NS/camera_info')
    parser.add_argument('--set', '-p', action='append', metavar='NAME:=VALUE', default=[],
                        help='set a depth node parameter, e.g. -p metric_mode:=fixed (ROS '
                             'syntax) or -p metric_mode=fixed; an unknown name is an error')
    parser.add_argument('--with-synthetic-camera', action='store_true',
                        help='also start a synthetic camera in each namespace')
    parser.add_argument('--camera-source', default='synthetic', metavar='SOURCE',
                        help='synthetic camera source: "synthetic" or a video file path')
    parser.add_argument('--camera-rate', type=float, default=10.0, metavar='HZ',
                        help='synthetic camera frame rate (default 10)')
    parser.add_argument('--anchor-ground-truth', action='store_true',
                        help='with --with-synthetic-camera: metres from metric_mode anchored, '
                             "the camera's ground truth standing in for a metric sensor")
    parser.add_argument('--duration', type=float, default=None, metavar='SECONDS',
                        help='stop after this many seconds (default: run until Ctrl-C)')
    parser.add_argument('--threads', type=int, default=None,
                        help="executor threads (default: rclpy's choice)")
    parser.add_argument('--domain-id', default=None, metavar='ID|auto',
                        help='ROS domain of the nodes (default: ROS_DOMAIN_ID, else 0, so '
                             'the rest of the robot sees them); auto = a private domain no '
                             'other process on this host uses (a self-contained run)')
    parser.set_defaults(func=run)
    return parser


def parse_sets(items):
    """Turn ``['name:=value', 'name=value', ...]`` into ``{name: typed value}``.

    :raises CliError: bad syntax, an unknown parameter name (close matches listed) or a value
        that does not fit the parameter.
    """
    from dvd_ros.errors import InputError
    from dvd_ros.ros.param_args import parse_assignments

    try:
        return parse_assignments(items)
    except InputError as exc:
        raise CliError(str(exc)) from None


def resolve_domain(text):
    """Return the ROS domain ``--domain-id`` asks for, or None for the environment's.

    :param text: None (``ROS_DOMAIN_ID``, else ROS's default 0), ``'auto'`` (a private domain,
        :func:`~dvd_ros.ros.domain.pick_domain`) or a number in 0..232.
    :raises CliError: anything else.
    """
    if text is None:
        return None
    if text == 'auto':
        from dvd_ros.ros.domain import pick_domain
        return pick_domain()
    try:
        domain = int(text)
    except ValueError:
        domain = -1
    if not 0 <= domain <= 232:
        raise CliError(f'--domain-id {text!r}: use auto or a ROS domain in 0..232 (0..101 are '
                       'safe on Linux)')
    return domain


def build_nodes(args, context):
    """Create the nodes the arguments ask for (depth nodes first)."""
    from rclpy.parameter import Parameter

    from dvd_ros.ros.depth_node import DepthNode
    from dvd_ros.ros.synthetic_camera import SyntheticCamera

    values = parse_sets(args.set)
    if args.weights is not None:
        values['weights'] = args.weights
    if args.backend is not None:
        values['backend'] = args.backend
    cli_args = None
    if args.anchor_ground_truth:
        if not args.with_synthetic_camera:
            raise CliError('--anchor-ground-truth needs --with-synthetic-camera (its ground '
                           'truth is the metric hint)')
        values.update(metric_mode='anchored', hint_type='image')
        cli_args = ['--ros-args', '-r', 'metric_hint:=ground_truth/depth']
    overrides = [Parameter(name, value=value) for name, value in values.items()]
    nodes = []
    for k, namespace in enumerate(args.namespace or ['']):
        nodes.append(DepthNode(namespace=namespace, context=context, cli_args=cli_args,
                               parameter_overrides=list(overrides)))
        if args.with_synthetic_camera:
            nodes.append(SyntheticCamera(namespace=namespace, context=context,
                                         parameter_overrides=[
                                             Parameter('source', value=args.camera_source),
                                             Parameter('rate', value=float(args.camera_rate)),
                                             Parameter('seed', value=k)]))
    return nodes


def run(args):
    """Run the nodes until Ctrl-C / SIGTERM or ``--duration``; return the exit status."""
    from pathlib import Path
    import sys

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from dvd_ros.errors import DvdError
    from dvd_ros.ros.shutdown import (
        ShutdownRequest,
        exit_now_if_busy,
        fatal_errors,
        finish,
        spin_until_shutdown,
    )

    ros_args = ['dvd-ros']
    if args.params_file:
        if not Path(args.params_file).is_file():
            raise CliError(f'parameter file {args.params_file!r} not found; pass a YAML file '
                           'such as config/depth.yaml')
        ros_args += ['--ros-args', '--params-file', args.params_file]
    domain = resolve_domain(args.domain_id)
    if domain is not None:
        print(f'dvd-ros run: ROS domain {domain}', file=sys.stderr, flush=True)
    request = ShutdownRequest().install()
    context = rclpy.context.Context()
    rclpy.init(args=ros_args, context=context, signal_handler_options=SignalHandlerOptions.NO,
               domain_id=domain)
    executor = MultiThreadedExecutor(num_threads=args.threads, context=context)
    nodes = []
    clean = True
    try:
        try:
            nodes = build_nodes(args, context)
        except DvdError as exc:
            raise CliError(str(exc)) from None
        for node in nodes:
            executor.add_node(node)
        spin_until_shutdown(executor, request, duration=args.duration)
        errors = fatal_errors(nodes)
        if errors:
            raise CliError(errors[0])
    finally:
        clean = finish(nodes, executor, context)
    request.ignore_further()
    exit_now_if_busy(clean, 0)
    return 0
