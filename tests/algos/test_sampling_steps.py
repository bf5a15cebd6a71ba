"""benchmarks/sampling_steps.py refuses bad settings before any LIBERO worker starts."""

import pytest


@pytest.mark.parametrize("argv, message", [
    (["samples=1"], "samples must be >= 2"),
    (["steps=[0]"], "every step count >= 1"),
    (["checkpoint=configs"], "has no bc_config.json"),
])
def test_bad_settings_fail_before_any_env_starts(import_benchmark, capsys, argv, message):
    with pytest.raises(SystemExit):
        import_benchmark("sampling_steps").main(argv)
    assert message in capsys.readouterr().err
