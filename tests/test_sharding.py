"""Sharding: the rules table, the mesh option, and sharded training equal to one device.

The multi-device checks run in child processes (tests/sharded_worker.py): JAX fixes its
device count at start-up and this process already has conftest's 4.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import grain
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from random_batches import random_text_batches

from gemini_jax import sharding
from gemini_jax.config import PRESETS, ConfigError
from gemini_jax.data.pipeline import DataError, _shard
from gemini_jax.model import Gemini
from gemini_jax.train import distributed

WORKER = Path(__file__).with_name("sharded_worker.py")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_worker(*args: str, timeout: float = 300) -> dict | list:
    env = {**os.environ, "PYTHONPATH": SRC, "XLA_FLAGS": ""}
    done = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the rules and the mesh option -------------------------------------------------------------

def test_mesh_shape_parses_and_explains_mistakes():
    assert sharding.MeshShape.parse("data=2,fsdp=2,tensor=2") == sharding.MeshShape(data=2, fsdp=2, tensor=2)
    assert sharding.MeshShape.parse("tensor=4").size == 4
    for bad, word in (("data=2,model=2", "model=2"), ("data=x", "integer"), ("data=0", "positive"),
                      ("data=2,data=2", "twice"), ("data", "data=2,fsdp=2")):
        with pytest.raises(ConfigError, match=word):
            sharding.MeshShape.parse(bad)


def test_a_mesh_must_use_every_device():
    with pytest.raises(ConfigError, match="8 devices but 4 are available"):
        sharding.make_mesh(sharding.MeshShape(data=2, tensor=4))
    mesh = sharding.make_mesh(sharding.MeshShape(data=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 2}


def test_logical_names_map_through_the_rules():
    sizes = {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (24, 4, 10), sizes) == P("fsdp", "tensor", None)
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (24, 2, 10), sizes) == P("fsdp", None, None)
    # A prime vocabulary cannot be split: replicated, not an error.
    assert sharding.logical_to_spec(("vocab", "embed"), (97, 24), sizes) == P(None, "fsdp")
    # A mesh axis serves one array axis only.
    assert sharding.logical_to_spec(("embed", "embed"), (24, 24), sizes) == P("fsdp", None)
    assert sharding.logical_to_spec(("batch", "length", "act_embed"), (8, 5, 24), sizes) == P(("data", "fsdp"), None, None)
    # Size-1 axes drop out: a one-device mesh replicates everything.
    assert sharding.logical_to_spec(("embed", "mlp"), (24, 40), {"data": 1, "fsdp": 1, "tensor": 1}) == P(None, None)
    with pytest.raises(ConfigError, match="no sharding rule"):
        sharding.logical_to_spec(("embd",), (24,), sizes)


@pytest.mark.parametrize("preset", ["test", "nano-1"])
def test_every_parameter_is_declared_with_logical_names(preset):
    model = nnx.eval_shape(lambda: Gemini(PRESETS[preset], rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    unnamed = [jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
               if not leaf.get_metadata().get("out_sharding")]
    assert unnamed == []
    # Names are metadata only: the model above was built without a mesh.


def test_the_decoder_is_tensor_and_fsdp_sharded_on_a_mesh():
    model = nnx.eval_shape(lambda: Gemini(PRESETS["test"], rngs=nnx.Rngs(0)))
    mesh = sharding.make_mesh(sharding.MeshShape(fsdp=2, tensor=2))
    specs = sharding.param_shardings(nnx.state(model, nnx.Param), mesh)
    block = specs["decoder"]["blocks"][0]
    assert block["attn"]["q"].get_value().spec == P("fsdp", "tensor", None)
    assert block["attn"]["k"].get_value().spec == P("fsdp", None, None)  # K heads replicated
    assert block["mlp"]["down"].get_value().spec == P("tensor", "fsdp")
    assert specs["embedder"]["table"].get_value().spec == P(None, "fsdp")  # vocab 97 is prime


def test_constraints_cost_nothing_without_a_mesh():
    x = jax.numpy.ones((4, 3, 2))
    assert sharding.constrain(x, ("batch", "length", "act_embed")) is x


# -- multi-host plumbing -----------------------------------------------------------------------

def test_distributed_arguments_come_all_or_none():
    with pytest.raises(ConfigError, match="all of --coordinator"):
        distributed.initialize(coordinator="127.0.0.1:1234")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        distributed.initialize(coordinator="localhost", num_processes=2, process_id=0)
    with pytest.raises(ConfigError, match="process-id"):
        distributed.initialize(coordinator="localhost:1", num_processes=2, process_id=2)
    assert distributed.initialize(coordinator="localhost:1", num_processes=1, process_id=0) is False


def test_cluster_detection_reads_the_launcher():
    assert not distributed.cluster_detected({})
    assert not distributed.cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"})
    assert distributed.cluster_detected({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"})
    assert distributed.cluster_detected({"OMPI_COMM_WORLD_SIZE": "4"})
    assert not distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"})


def test_each_process_reads_its_own_records():
    records = grain.MapDataset.range(10)
    shards = [list(_shard(records, (i, 3))) for i in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(10)) and shards[1] == [1, 4, 7]
    with pytest.raises(DataError, match="0 <= index < count"):
        _shard(records, (3, 3))


# -- sharded training equals one device ----------------------------------------------------------

@pytest.fixture(scope="module")
def compared():
    """20 steps of the `test` preset, float32: one device, then data=2 x fsdp=2 x tensor=2."""
    return run_worker("compare", "--devices", "8", "--mesh", "data=2,fsdp=2,tensor=2")


@pytest.mark.slow
def test_data_fsdp_tensor_mesh_gives_the_single_device_losses(compared):
    assert compared["devices"] == 8
    np.testing.assert_allclose(compared["sharded"], compared["single"], rtol=0, atol=1e-5)
    assert compared["single"][-1] < compared["single"][0]  # it trains
    assert compared["specs"]["['decoder']['blocks'][0]['mlp']['gate'].value"] == "P('fsdp', 'tensor')"


@pytest.mark.slow
def test_the_in_memory_replica_sits_on_other_devices_and_recovers_exactly(compared):
    replica = compared["replica"]
    # Deleting the primary state and recovering it from the replica gives the very same steps.
    assert replica["step"] == 20 and replica["recovered"] == replica["continued"]
    leaves = replica["leaves"]
    # Every mesh position of every array has its copy on another device ...
    assert all(leaf["moved_positions"] == leaf["positions"] == 8 for leaf in leaves)
    # ... so no device holds both copies of a slice of an array split four ways (fsdp x tensor).
    split = [leaf for leaf in leaves if leaf["slices"] == 4]
    assert split and all(leaf["same_slice_devices"] == 0 for leaf in split)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_over_loopback_give_the_same_losses(compared):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "XLA_FLAGS": ""}
    procs = [subprocess.Popen([sys.executable, str(WORKER), "process", "--port", str(port), "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, err[-4000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # never leave a peer waiting on its coordinator
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, result in enumerate(outputs):
        assert (result["process"], result["processes"], result["devices"]) == (i, 2, 8)
        np.testing.assert_allclose(result["losses"], compared["single"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_nano_training_steps_lower_for_64_devices():
    """Compile-only: the bfloat16 nano steps lower for 4 x 8 x 2 host devices from eval_shape
    parameters (nothing allocated); per-device parameter bytes show the 16-way split."""
    results = run_worker("lower", "--devices", "64", "--preset", "nano-1,nano-2", "--mesh",
                         "data=4,fsdp=8,tensor=2", "--batch", "64", "--seq-len", "2048")
    for r in results:
        print(json.dumps(r))
        assert r["devices"] == 64 and r["sharding_annotations"] > 0
        # fsdp x tensor = 16; norms, K/V heads and encoder odds and ends stay replicated.
        assert r["param_bytes_total"] / 16 <= r["param_bytes_per_device"] < r["param_bytes_total"] / 14
        assert r["opt_bytes_per_device"] >= 2 * r["param_bytes_per_device"]


def test_a_run_trained_on_a_mesh_loads_on_one_device_and_resumes_on_another_mesh(tmp_path):
    """Checkpoints of a sharded run are a run like any other: `generate`, `eval` and `serve`
    load them on one device, and training resumes on a mesh of another shape."""
    from gemini_jax import checkpoint
    from gemini_jax.train.optimizer import OptimizerConfig
    from gemini_jax.train import TrainConfig, train

    config = PRESETS["test"].text_only

    def run(steps: int, mesh: sharding.MeshShape):
        train_config = TrainConfig(steps=4, log_every=1, checkpoint_every=2, progress=False, mesh=mesh,
                                   optimizer=OptimizerConfig(warmup_steps=1, total_steps=4))
        return train(config=config, run_dir=tmp_path / "run", data=random_text_batches(config.vocab_size, rows=4),
                     train_config=train_config, stop_after=steps)

    (tmp_path / "tok.model").write_bytes(b"unused here")
    checkpoint.write_run_files(tmp_path / "run", config=config, tokenizer_path=tmp_path / "tok.model")
    trained = run(2, sharding.MeshShape(fsdp=2, tensor=2))
    model = Gemini(config, rngs=nnx.Rngs(1))  # other initial values: all must be overwritten
    assert checkpoint.load_params(tmp_path / "run", model) == 2
    loaded, saved = (nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in (model, trained.model))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), loaded, saved)
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(loaded))
    resumed = run(4, sharding.MeshShape(data=4))
    assert resumed.step == 4 and np.isfinite(resumed.final_loss)
