"""The `dvd-ros` command: one entry point, one module per subcommand."""

import argparse
import importlib
import sys

# Subcommand -> module. Each module defines `add_parser(subparsers)` (which sets
# `func` on its parser) and is imported only when the command line needs it, so
# `dvd-ros weights` never pays for rclpy and `dvd-ros run` never for training code.
SUBCOMMANDS = {
    'weights': ('dvd_ros.cli.weights', 'inspect, convert and locate DVD weights'),
    'run': ('dvd_ros.cli.run', 'start the depth node(s) in one process (no ros2 launch needed)'),
    'demo': ('dvd_ros.cli.demo', 'synthetic camera -> depth node demo with accuracy report'),
    'train': ('dvd_ros.cli.train', 'fine-tune a DVD model (LMR losses, LoRA)'),
    'engine': ('dvd_ros.cli.engine', 'export ONNX / build TensorRT engines'),
    'offline': ('dvd_ros.cli.offline', 'process a video, image folder or ROS 2 bag'),
}


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def build_parser(argv=None):
    """Build the top-level parser, importing only the subcommand named in `argv`."""
    parser = argparse.ArgumentParser(
        prog='dvd-ros', description='DVD monocular video depth for ROS 2.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    wanted = next((a for a in (argv or []) if not a.startswith('-')), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if wanted in SUBCOMMANDS and name != wanted:
            sub.add_parser(name, help=help_text)
            continue
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv=None):
    """Run the `dvd-ros` command line; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return args.func(args) or 0
    except CliError as exc:
        print(f'dvd-ros {args.command}: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'dvd-ros {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    # Under `python -m` this file runs as __main__, whose CliError is not the class the
    # subcommands import; dispatch through the package module so their errors are caught.
    from dvd_ros.cli.main import main as package_main
    sys.exit(package_main())
