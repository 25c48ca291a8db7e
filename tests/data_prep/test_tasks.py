"""The prep's task runner (``data_prep.tasks``): the same results in process and as Ray tasks,
and a task's memory reserved with Ray, so a node runs no more tasks than its memory holds."""

from __future__ import annotations


def _square(x: int) -> int:
    return x * x


def _resources(_: int) -> dict:
    import ray

    return ray.get_runtime_context().get_assigned_resources()


def test_tasks_run_here_without_ray_and_as_ray_tasks_with_their_memory_reserved():
    from data_prep.ray_job import ray_session
    from data_prep.tasks import run_tasks

    here = list(run_tasks(_square, ((i,) for i in range(5))))
    assert here == [0, 1, 4, 9, 16]
    with ray_session(1, None):
        assert sorted(run_tasks(_square, ((i,) for i in range(5)))) == here
        (given,) = run_tasks(_resources, [(0,)], memory_mb=64)
        (plain,) = run_tasks(_resources, [(0,)])
    assert given.get("memory") == 64 << 20 and "memory" not in plain
