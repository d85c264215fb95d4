"""dask.distributed: same results as the local schedulers, one model load per worker, small tasks,
and a worker killed mid-compute changes nothing."""

from __future__ import annotations

import logging
import os
import signal
import time

import cloudpickle
import numpy as np
import pytest
import xarray as xr
from conftest import ALL_BANDS, make_cube

import xr_opensr.accessor  # noqa: F401
from xr_opensr import _kernel, _runtime

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.distributed

KW = {"model": "tiny", "steps": 2}


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR,
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def cube(**chunks):
    return make_cube(48, 48, times=2, seed=7, chunks=chunks or None)


@pytest.fixture(scope="module")
def reference():
    return cube().opensr.superresolve(2, **KW).compute(scheduler="sync")


def test_same_result_and_one_model_load_per_worker(client, reference):
    ds = cube(time=1, y=12, x=24).opensr.superresolve(2, **KW)
    client.run(_kernel.reset_kernel_stats)
    res = client.compute(ds).result(timeout=300)
    xr.testing.assert_identical(res, reference)
    loads = client.run(_runtime.load_count)
    stats = client.run(_kernel.kernel_stats)
    assert sum(s["patches"] for s in stats.values()) == 2 * 16  # each patch once, cluster-wide
    assert all(s["calls"] >= 2 for s in stats.values())  # both workers ran several blocks ...
    assert all(n == 1 for n in loads.values())  # ... with the model loaded once per worker
    client.compute(ds).result(timeout=300)  # a second run reuses the cached models
    assert client.run(_runtime.load_count) == loads


def test_graph_carries_a_spec_not_weights():
    ds = cube(time=1, y=12).opensr.superresolve(2, **KW)
    graph = dict(ds.sr.data.__dask_graph__())
    ours = {k: v for k, v in graph.items() if isinstance(k, tuple) and str(k[0]).startswith("opensr-")}
    assert len(ours) > 10
    sizes = [len(cloudpickle.dumps(task)) for task in ours.values()]
    assert max(sizes) < 100_000
    blob = b"".join(cloudpickle.dumps(task) for task in ours.values())
    assert b"ModelSpec" in blob and b"OrderedDict" not in blob and b"safetensors" not in blob


def test_ten_bands_same_result_and_each_model_loaded_once_per_worker(client, model20):
    ten = make_cube(24, 24, times=2, seed=7, bands=ALL_BANDS)
    kw = {**KW, "bands": "all", "model20": model20}
    expected = ten.opensr.superresolve(2, **kw).compute(scheduler="sync")
    before = client.run(_runtime.load_count)
    res = client.compute(ten.chunk({"time": 1, "y": 12}).opensr.superresolve(2, **kw)).result(timeout=300)
    xr.testing.assert_identical(res, expected)
    loads = client.run(_runtime.load_count)
    assert all(loads[w] - before[w] <= 2 for w in loads)  # the 10 m model and the 20 m model, at most once each
    client.compute(ten.chunk({"time": 1, "y": 12}).opensr.superresolve(2, **kw)).result(timeout=300)
    assert client.run(_runtime.load_count) == loads


def test_worker_killed_mid_compute(client, reference):
    ds = cube(time=1, y=12, x=12).opensr.superresolve(2, **KW)
    client.run(_kernel.reset_kernel_stats)
    future = client.compute(ds)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some, not all, patch tasks ran
        done = sum(s["calls"] for s in client.run(_kernel.kernel_stats).values())
        if done >= 2:
            break
        time.sleep(0.05)
    assert not future.done()
    victim = next(iter(client.scheduler_info()["workers"]))
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)  # the nanny restarts it; the scheduler recomputes its lost tasks
    res = future.result(timeout=300)
    xr.testing.assert_identical(res, reference)
    assert np.isfinite(res.sr).all()


def test_local_cluster_cpu_fallback_one_task_per_worker(reference, monkeypatch):
    """``_runtime.local_cluster(device="cpu")``: the layout the CLI's ``--cluster local`` uses where no
    GPU is (dask_cuda.LocalCUDACluster on GPUs); workers of one task, same result as the sync run.

    The cluster class gets worker processes (recorded); it runs them as threads here: starting worker
    processes (torch imported in each) is what ``client`` above and the CLI's ``--gpu-workers`` CPU
    fallback (tests/test_cli.py, through this function) already do."""
    made = []
    real = distributed.LocalCluster

    def in_process(**kwargs):
        made.append(dict(kwargs))
        return real(**{**kwargs, "processes": False})

    monkeypatch.setattr(distributed, "LocalCluster", in_process)
    with _runtime.local_cluster("cpu", n_workers=2, silence_logs=logging.ERROR) as cluster, \
            distributed.Client(cluster) as c:
        assert type(cluster).__name__ == "LocalCluster"
        assert all(w["nthreads"] == 1 for w in c.scheduler_info()["workers"].values())
        assert len(c.scheduler_info()["workers"]) == 2
        res = c.compute(cube(time=1, y=24, x=24).opensr.superresolve(2, **KW)).result(timeout=300)
    assert made == [{"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
                     "silence_logs": logging.ERROR}]
    xr.testing.assert_identical(res, reference)


def test_local_cluster_bad_device_and_missing_dask_cuda():
    from xr_opensr.errors import InputError

    with pytest.raises(InputError, match="device='tpu' for a local cluster"):
        _runtime.local_cluster("tpu")
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'xr-opensr\[cuda\]'"):
            _runtime.local_cluster("cuda")
    else:  # pragma: no cover - only where dask-cuda is installed
        pytest.skip("dask-cuda is installed: the missing-extra message cannot be checked here")
