# Source me: the project's venv, the colcon overlay (timebill_msgs) and safe ROS defaults.
_tb_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$_tb_root/.venv/bin/activate"
. "$_tb_root/install/setup.bash"
# DDS stays on this machine; pick your own ROS_DOMAIN_ID to isolate runs.
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}
# Nothing is ever downloaded at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TIMEBILL_HOME=${TIMEBILL_HOME:-$_tb_root/.timebill}
unset _tb_root
