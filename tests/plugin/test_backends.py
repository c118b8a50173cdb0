"""--chaos-backend: which tests a backend selects, and the usage errors of its settings
(nothing is started: the swarm itself is tested in tests/integration)."""

from __future__ import annotations

import pytest

TESTS = """
import pytest

def test_plain():
    pass

def test_compose_only(chaos):
    pass

@pytest.mark.chaos_backends("compose", "swarm")
def test_both(chaos):
    pass

@pytest.mark.chaos_backends("swarm")
def test_swarm_only(chaos_project):
    pass
"""


def _collected(result: pytest.RunResult) -> list[str]:
    return sorted(line.split("::")[1] for line in result.outlines if "::" in line)


def test_swarm_selects_the_chaos_tests_marked_for_it_and_those_using_no_chaos_fixture(pytester):
    pytester.makepyfile(TESTS)
    swarm = pytester.runpytest_subprocess("--collect-only", "-q", "--chaos-backend=swarm")
    assert _collected(swarm) == ["test_both", "test_plain", "test_swarm_only"]
    swarm.stdout.fnmatch_lines(["*1 deselected*"])
    compose = pytester.runpytest_subprocess("--collect-only", "-q")
    assert _collected(compose) == ["test_both", "test_compose_only", "test_plain"]


def test_the_backend_comes_from_the_environment_too(pytester, monkeypatch):
    pytester.makepyfile(TESTS)
    monkeypatch.setenv("CHAOS_BACKEND", "swarm")
    result = pytester.runpytest_subprocess("--collect-only", "-q")
    assert "test_compose_only" not in _collected(result)


def test_an_unknown_backend_is_a_usage_error_naming_its_source(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--chaos-backend=kubernetes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--chaos-backend: the backend is one of compose, swarm, not 'kubernetes'.*"]
    )


def test_a_bad_node_count_in_the_ini_is_a_usage_error_naming_the_ini(pytester):
    pytester.makeini("[pytest]\nchaos_swarm_nodes = 12\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*ini option chaos_swarm_nodes: a local swarm has 1 to 9 nodes, not '12'.*"]
    )


def test_a_marker_naming_an_unknown_backend_is_a_usage_error(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.chaos_backends("kubernetes")
        def test_x(chaos):
            pass
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*chaos_backends names ?'kubernetes'?; the backends are compose, swarm."]
    )


def test_the_swarm_backend_without_a_stack_file_says_how_to_name_one(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.chaos_backends("swarm")
        def test_x(chaos_project):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--chaos-backend=swarm")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*--chaos-backend swarm deploys a stack file: name it with the ini option "
         "chaos_swarm_stack_file or --chaos-swarm-stack-file.*"]
    )  # fmt: skip
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chaos-swarm-manager=tcp://10.0.0.5:2376"],
         "*--chaos-swarm-manager attaches the swarm backend: add --chaos-backend swarm.*"),
        (["--chaos-backend=swarm", "--chaos-swarm-manager=tcp://10.0.0.5:2376"],
         "*--chaos-swarm-manager: name the deployed stack*--chaos-swarm-stack NAME.*"),
        (["--chaos-backend=swarm", "--chaos-swarm-stack=shop"],
         "*--chaos-swarm-stack applies to an attached swarm: add --chaos-swarm-manager URL.*"),
        (["--chaos-backend=swarm", "--chaos-swarm-manager=unix:///x", "--chaos-swarm-stack=s",
          "--chaos-swarm-engine=node2"],
         "*--chaos-swarm-engine: 'node2' is not NODE=URL (e.g. node2=tcp://10.0.0.6:2376).*"),
    ],
    ids=["without-swarm", "without-stack", "stack-alone", "bad-engine"],
)  # fmt: skip
def test_attaching_a_swarm_checks_its_settings_before_anything(pytester, args, message):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_docker_compose_v1_with_pytest_dockers_default_set_up_is_named_before_it_runs(
    pytester,
):
    """pytest-docker's default set-up is `up --build --wait`; docker-compose 1.x prints
    its usage for it, exits 0 and starts nothing, after which a 60 s wait for health
    ended in an empty list. Said at once, with the fixture to define."""
    import shutil
    import subprocess

    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed: nothing to check it against")
    version = subprocess.run(
        ["docker-compose", "version", "--short"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not version.startswith("1."):
        pytest.skip(f"docker-compose here is {version}, which knows --wait")
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def docker_compose_command():
            return "docker-compose"
        """
    )
    pytester.makepyfile("def test_x(chaos_project):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*docker-compose {version} does not know `up --wait`*def docker_setup(): return*"]
    )
