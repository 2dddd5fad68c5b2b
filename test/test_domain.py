"""A private ROS domain per run: the picker, the demo and `dvd-ros run`, and real isolation."""

import random
import socket

import pytest

from dvd_ros.ros import domain


def _bind_in(domain_id):
    """Bind a UDP socket on a free port of ``domain_id``'s RTPS block; return it."""
    base = domain.PORT_BASE + domain.DOMAIN_GAIN * domain_id
    for port in range(base + domain.DOMAIN_GAIN - 1, base, -1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(('127.0.0.1', port))
            return sock
        except OSError:
            sock.close()
    pytest.skip(f'no free UDP port in the block of domain {domain_id}')


def test_busy_domain_is_seen_and_skipped():
    taken = 97
    sock = _bind_in(taken)
    try:
        assert taken in domain.busy_domains()
        for seed in range(20):
            assert domain.pick_domain(taken - 1, taken, rng=random.Random(seed)) == taken - 1 \
                or (taken - 1) in domain.busy_domains()
    finally:
        sock.close()
    assert domain.domain_of_port(7400) == 0 and domain.domain_of_port(7650) == 1
    assert domain.domain_of_port(7399) is None


def test_picks_stay_in_the_private_range(tmp_path):
    # No readable socket table (not Linux): still a domain of the range, never 0.
    empty = tmp_path / 'udp'
    empty.write_text('header\n')
    assert domain.busy_domains((str(empty), str(tmp_path / 'missing'))) == set()
    picks = {domain.pick_domain(rng=random.Random(seed)) for seed in range(50)}
    low, high = domain.PRIVATE_DOMAINS
    assert picks and all(low <= d <= high for d in picks) and 0 not in picks
    assert domain.user_domain({'ROS_DOMAIN_ID': ' 7 '}) == 7
    assert domain.user_domain({'ROS_DOMAIN_ID': ''}) is None and domain.user_domain({}) is None


def test_demo_runs_on_a_private_domain(monkeypatch, tmp_path, capsys):
    """`dvd-ros demo` ignores ROS_DOMAIN_ID (it is self-contained); --domain-id wins."""
    pytest.importorskip('rclpy')
    from dvd_ros.cli.main import main
    from dvd_ros.errors import DvdError
    from dvd_ros.ros import recorder

    seen = []

    def fake_record(*args, domain_id=None, **kwargs):
        seen.append(domain_id)
        raise DvdError('stop here')

    monkeypatch.setattr(recorder, 'record_demo', fake_record)
    monkeypatch.setenv('ROS_DOMAIN_ID', '0')
    assert main(['demo', '--out', str(tmp_path), '--window', '5']) == 2
    assert main(['demo', '--out', str(tmp_path), '--window', '5', '--domain-id', '42']) == 2
    assert seen == [None, 42]  # None: record_demo picks a private domain itself
    assert main(['demo', '--out', str(tmp_path), '--domain-id', '300']) == 2
    assert '--domain-id 300' in capsys.readouterr().err


def test_run_domain_option():
    pytest.importorskip('rclpy')
    from dvd_ros.cli.main import CliError
    from dvd_ros.cli.run import resolve_domain

    assert resolve_domain(None) is None  # the user's ROS_DOMAIN_ID (or 0) wins
    assert resolve_domain('12') == 12
    low, high = domain.PRIVATE_DOMAINS
    assert low <= resolve_domain('auto') <= high
    for bad in ('-1', '233', 'x'):
        with pytest.raises(CliError, match='use auto or a ROS domain in 0..232'):
            resolve_domain(bad)


def test_foreign_publisher_on_default_domain_does_not_reach_the_test_node():
    """A 128x96 camera on domain 0 (another run, a robot) never reaches this run's node."""
    pytest.importorskip('rclpy')
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    import ros_harness
    from sensor_msgs.msg import Image

    from dvd_ros.ros.depth_node import DepthNode
    from dvd_ros.ros.stand_in import StandInRegressor

    assert ros_harness.domain_id() != 0
    ours = ros_harness.make_context()
    foreign = rclpy.context.Context()
    rclpy.init(context=foreign, domain_id=0)
    node = probe = outsider = spinner = None
    try:
        node = DepthNode(StandInRegressor(), context=ours, parameter_overrides=ros_harness.
                         overrides(backend='stand-in', window=5, overlap=2))
        sizes = []
        node.create_subscription(Image, 'image', lambda m: sizes.append((m.width, m.height)),
                                 qos_profile_sensor_data)
        probe = ros_harness.Probe(ours)
        outsider = rclpy.node.Node('foreign_camera', context=foreign)
        pub = outsider.create_publisher(Image, 'image', qos_profile_sensor_data)
        spinner = ros_harness.Spinner(ours, node, probe)
        assert ros_harness.wait_matched(probe, node)
        big = ros_harness.frame(0, height=96, width=128)
        for i in range(40):
            pub.publish(ros_harness.image_msg(big, ros_harness.header(i)))
            probe.pub_image.publish(ros_harness.image_msg(ros_harness.frame(i),
                                                          ros_harness.header(i)))
            ros_harness.wait_for(lambda: False, timeout=0.02)
        # Our own camera's frames arrive (the test can see images at all) ...
        assert ros_harness.wait_for(lambda: sizes.count((32, 24)) >= 10)
        # ... and not one of the foreign ones, sent interleaved with them.
        assert (128, 96) not in sizes
        assert pub.get_subscription_count() == 0
    finally:
        if spinner is not None:
            spinner.stop()
        for n in (node, probe, outsider):
            if n is not None:
                n.destroy_node()
        foreign.try_shutdown()
        ours.try_shutdown()


def test_confine_to_loopback_environment(tmp_path):
    profile = tmp_path / 'fastdds.xml'
    env = {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    domain.confine_to_loopback(profile, env, force=True)
    # The profile alone: LOCALHOST would add a UDP transport on 0.0.0.0 and the host.
    assert env == {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)}
    env = {}
    domain.confine_to_loopback(profile, env)
    assert env == {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)}
    env = {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/mine.xml'}  # the user's profile is kept
    domain.confine_to_loopback(profile, env)
    assert env == {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/mine.xml',
                   'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
    env = {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}  # the profile means nothing there
    domain.confine_to_loopback(profile, env, force=True)
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 'FASTDDS_DEFAULT_PROFILES_FILE' not in env
    env = {}
    domain.confine_to_loopback(None, env)
    assert env == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
