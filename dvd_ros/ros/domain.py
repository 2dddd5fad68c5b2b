"""A private ROS domain per run, so two runs on one host never see each other's topics.

Tests and the demo start their own nodes and need no one else's: each picks a domain that no
process on this host uses yet. No rclpy here: the id must be chosen before rclpy is imported
(it reads ``ROS_DOMAIN_ID`` once per context).
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
