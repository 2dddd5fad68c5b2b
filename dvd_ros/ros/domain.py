"""DDS kept on this machine, and a private ROS domain per run.

Tests and the demo start their own nodes and need no one else's: each picks a domain that no
process on this host uses yet, and DDS binds loopback only. No rclpy here: this must happen
before rclpy is imported (the environment is read when a participant is created).
"""

import os
from pathlib import Path
import random

# Domains 1..101: on Linux, the RTPS ports of higher domains (7400 + 250 * id + ...) fall into
# the kernel's ephemeral port range (32768+) and may be taken (ROS 2 docs, "The ROS_DOMAIN_ID").
# 0 is everybody's default domain, so a private run never uses it.
PRIVATE_DOMAINS = (1, 101)
# RTPS well-known ports: every participant of domain d binds ports in [base, base + gain).
PORT_BASE, DOMAIN_GAIN = 7400, 250
RANGE_VARIABLE = 'ROS_AUTOMATIC_DISCOVERY_RANGE'
PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'


def confine_to_loopback(profile, environ=None, force=False):
    """Keep DDS on this machine: our Fast DDS profile, or ROS's LOCALHOST discovery range.

    With the profile (``config/fastdds_localhost.xml``: every socket on 127.0.0.1, discovery
    by unicast to 127.0.0.1) ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is better unset: ``LOCALHOST``
    makes rmw_fastrtps add a second UDP transport whose sockets bind 0.0.0.0 and the host's
    address (measured with ``ss -uapn``). Other RMWs do not read the profile: they get
    ``LOCALHOST``.

    :param profile: path of the profile, or None when it is not found.
    :param environ: the environment to change (default ``os.environ``).
    :param force: tests: always our profile, the range unset. Otherwise a profile or range the
        user set is kept.
    """
    env = os.environ if environ is None else environ
    fast_dds = 'fastrtps' in env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    if profile is None or not fast_dds:
        if force:
            env[RANGE_VARIABLE] = 'LOCALHOST'
        else:
            env.setdefault(RANGE_VARIABLE, 'LOCALHOST')
        return
    if force:
        env[PROFILE_VARIABLE] = str(profile)
        env.pop(RANGE_VARIABLE, None)
    elif PROFILE_VARIABLE not in env:
        env[PROFILE_VARIABLE] = str(profile)
    else:
        env.setdefault(RANGE_VARIABLE, 'LOCALHOST')  # the user's own profile: ROS's guard


def domain_of_port(port):
    """Return the ROS domain whose RTPS port block holds UDP ``port``, or None."""
    if port < PORT_BASE:
        return None
    return (port - PORT_BASE) // DOMAIN_GAIN


def busy_domains(tables=('/proc/net/udp', '/proc/net/udp6')):
    """Return the domains with a UDP socket bound on this host (any process, any address).

    :param tables: the kernel's socket tables (Linux); unreadable ones are skipped.
    :return: set of domain ids (empty when nothing can be read, e.g. not on Linux).
    """
    found = set()
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 1 and ':' in cols[1]:
                domain = domain_of_port(int(cols[1].rsplit(':', 1)[1], 16))
                if domain is not None:
                    found.add(domain)
    return found


def pick_domain(low=PRIVATE_DOMAINS[0], high=PRIVATE_DOMAINS[1], rng=random):
    """Return a domain id in ``[low, high]`` that no process on this host uses now.

    Random among the free ones (two runs starting together rarely pick the same); any in the
    range when all are busy.
    """
    candidates = list(range(low, high + 1))
    free = sorted(set(candidates) - busy_domains())
    return rng.choice(free or candidates)


def user_domain(environ=None):
    """Return the domain the user set in ``ROS_DOMAIN_ID``, or None when unset or empty."""
    text = (os.environ if environ is None else environ).get('ROS_DOMAIN_ID', '').strip()
    return int(text) if text else None
