"""What the launch files share: model arguments that override the parameter file when given.

Imported only by ``launch/*.launch.py``, so launch / launch_ros are imported only when used.
"""

# Launch arguments that override the parameter file only when given (non-empty), so a
# params_file that sets weights or device is not silently overridden by a launch default.
MODEL_ARGUMENTS = ('weights', 'backend', 'device', 'dtype', 'precision')

MODEL_ARGUMENT_HELP = {
    'weights': 'DVD weights file or folder (empty: the params_file value, whose default is the '
               'embedded tiny model)',
    'backend': 'torch, torch-compile, onnxruntime, tensorrt or stand-in (empty: the '
               'params_file value)',
    'device': 'torch device, e.g. cuda or cpu (empty: the params_file value)',
    'dtype': 'float32, bfloat16 or float16 (empty: the params_file value)',
    'precision': 'onnxruntime / tensorrt graph precision: fp32, fp16, bf16 or fp8 (empty: the '
                 'params_file value, whose default follows dtype)',
}


def model_arguments():
    """Return the DeclareLaunchArgument actions of :data:`MODEL_ARGUMENTS` (default empty)."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(name, default_value='', description=MODEL_ARGUMENT_HELP[name])
            for name in MODEL_ARGUMENTS]


def model_overrides(context):
    """Return {name: ParameterValue} of the model launch arguments that were given."""
    from launch.substitutions import LaunchConfiguration
    from launch_ros.parameter_descriptions import ParameterValue

    values = {name: LaunchConfiguration(name).perform(context) for name in MODEL_ARGUMENTS}
    # value_type=str: launch would otherwise YAML-parse the text (a path like '1.1' -> float).
    return {name: ParameterValue(value, value_type=str) for name, value in values.items()
            if value}
