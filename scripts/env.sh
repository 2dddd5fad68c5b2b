# Source me: ROS 2 environment for the venv, DDS confined to loopback.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$_here/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# The profile binds every DDS socket to 127.0.0.1; ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST on top
# would make rmw_fastrtps add a UDP transport bound to 0.0.0.0 and the host's address.
export FASTDDS_DEFAULT_PROFILES_FILE="$_here/config/fastdds_localhost.xml"
unset ROS_AUTOMATIC_DISCOVERY_RANGE
export PYTHONUNBUFFERED=1
unset _here
