# Source me: ROS 2 environment for the venv, DDS confined to loopback.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$_here/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$_here/config/fastdds_localhost.xml"
export PYTHONUNBUFFERED=1
unset _here
