"""Distillation: the KL term and its gradient, alpha = 0 is plain training, a student moves
towards a trained teacher run, and bad teachers are refused with clear errors."""

import dataclasses
import functools
import inspect
import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax import checkpoint, cli, sharding
from gemini_jax.checkpoint import Checkpointer, CheckpointError
from gemini_jax.config import PRESETS, ConfigError
from gemini_jax.data import pipeline
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.train.distill import (
    DistillConfig,
    DistillTrainer,
    check_compatible,
    distill_loss_parts,
    kl_divergence,
    load_teacher,
)
from gemini_jax.model import Gemini
from gemini_jax.model.layers import tied_logits
from gemini_jax.train import replay
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train import TrainConfig, Trainer, train

CONFIG = dataclasses.replace(PRESETS["test"].text_only, vocab_size=400)
OPTIMIZER = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, total_steps=20)


def test_kl_is_zero_between_equal_distributions_and_positive_otherwise():
    rng = np.random.default_rng(0)
    student, teacher = (jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32) for _ in range(2))
    weights = jnp.asarray([[1, 1, 0], [1, 0, 0]], jnp.float32)
    kl_at_2 = jax.jit(functools.partial(kl_divergence, temperature=2.0))
    assert abs(float(kl_at_2(teacher, teacher, weights))) < 1e-6
    kl = float(kl_at_2(student, teacher, weights))
    assert kl > 0.01
    # Positions outside the weights do not count.
    assert float(kl_at_2(student.at[:, 2].add(5.0), teacher, weights)) == pytest.approx(kl, rel=1e-6)


def test_kl_gradient_is_the_analytic_one():
    # d KL(p || softmax(s / T)) / ds = (softmax(s / T) - p) / T, divided by the weighted count.
    student = jnp.asarray([[[0.3, -1.2, 2.0, 0.0, 0.7], [1.0, 1.0, 1.0, 1.0, 1.0]]], jnp.float32)  # [1, 2, 5]
    teacher = jnp.asarray([[[1.5, 0.1, -0.4, 0.9, -2.0], [0.0, 3.0, 0.0, 0.0, 0.0]]], jnp.float32)
    weights = jnp.asarray([[1.0, 0.0]], jnp.float32)
    temperature = 3.0
    grad = jax.jit(jax.grad(lambda s: kl_divergence(s, teacher, weights, temperature=temperature)))(student)
    expected = (jax.nn.softmax(student[0, 0] / temperature) - jax.nn.softmax(teacher[0, 0] / temperature)) / temperature
    np.testing.assert_allclose(np.asarray(grad[0, 0]), np.asarray(expected), atol=1e-7)
    np.testing.assert_array_equal(np.asarray(grad[0, 1]), 0.0)


@pytest.fixture(scope="module")
def text_batches(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "t.model"
    tok = train_tokenizer([inspect.getsource(textwrap)], vocab_size=400, path=path)
    documents = [inspect.getsource(textwrap)[i : i + 600] for i in range(0, 12_000, 600)]
    stream = iter(pipeline.packed_text(documents, tokenizer=tok, seq_len=48, batch_size=4, seed=0,
                                       prefetch_batches=0))
    return path, [next(stream) for _ in range(12)]


def fresh(model):
    """A copy of a (cached, shared) model with arrays of its own: a training step donates them."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.array, state))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, build_model, text_batches):
    """A tiny trained teacher run directory, and the plain trainer's first losses on the way."""
    tokenizer_path, batches = text_batches
    trainer = Trainer(fresh(build_model(CONFIG, seed=0)), OPTIMIZER)
    losses = [float(trainer.step(b)["loss"]) for b in batches]
    run_dir = tmp_path_factory.mktemp("teacher")
    checkpoint.write_run_files(run_dir, config=CONFIG, tokenizer_path=tokenizer_path)
    checkpointer = Checkpointer(run_dir, async_save=False)
    checkpointer.save(len(batches), state=trainer.state(), meta={"step": len(batches)})
    checkpointer.close()
    return run_dir, losses


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_chunked_distillation_loss_equals_the_whole_one(alpha):
    keys = jax.random.split(jax.random.key(0), 5)
    student_hidden = jax.random.normal(keys[0], (2, 5, 8))
    teacher_hidden = jax.random.normal(keys[1], (2, 5, 6))  # the teacher may be wider
    student_table, teacher_table = jax.random.normal(keys[2], (11, 8)), jax.random.normal(keys[3], (11, 6))
    targets = jax.random.randint(keys[4], (2, 5), 0, 11)
    weights = jnp.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 0]], jnp.float32)
    project = functools.partial(tied_logits, dtype=jnp.float32)

    def loss(student, chunk_tokens):
        table, hidden = student
        return distill_loss_parts(hidden, teacher_hidden, targets, weights, student_table=table,
                                  teacher_table=teacher_table, project=project, temperature=jnp.float32(2.0),
                                  alpha=jnp.float32(alpha), chunk_tokens=chunk_tokens)

    # 10 positions: whole at 16 tokens a chunk; in 4 chunks of 3 (two padding positions).
    (whole, whole_parts), whole_grads = jax.value_and_grad(loss, has_aux=True)((student_table, student_hidden), 16)
    (chunked, parts), grads = jax.value_and_grad(loss, has_aux=True)((student_table, student_hidden), 3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5)
    for name in ("kl", "cross_entropy", "count"):
        np.testing.assert_allclose(parts[name], whole_parts[name], rtol=1e-5)
    for got, want in zip(grads, whole_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(whole_grads[1][0, 2]).max()) == 0.0  # an unscored position gets no gradient


def test_alpha_zero_is_plain_training_and_alpha_one_then_lowers_the_kl(teacher_run, build_model, text_batches):
    run_dir, plain_losses = teacher_run
    _, batches = text_batches
    trainer = DistillTrainer(fresh(build_model(CONFIG, seed=0)), OPTIMIZER, teacher=load_teacher(run_dir),
                             distill=DistillConfig(alpha=0.0))
    losses = [float(trainer.step(b)["loss"]) for b in batches[:3]]
    # Bit-equal today; the tolerance lets Trainer._loss sum its cross-entropy another way
    # (in vocabulary chunks) without this test failing on the last bit.
    np.testing.assert_allclose(losses, plain_losses[:3], rtol=1e-6)

    # The settings are inputs of the compiled step: the same program now distils only.
    trainer.distill = DistillConfig(alpha=1.0, temperature=2.0)
    # One batch again and again: each step's metrics are its KL before that step's update.
    metrics = [trainer.step(batches[3]) for _ in range(10)]
    kl = [float(m["kl"]) for m in metrics]
    assert kl[-1] < 0.5 * kl[0], kl
    assert float(metrics[-1]["loss"]) == pytest.approx(4.0 * kl[-1], rel=1e-6)  # alpha * T^2 * KL
    assert float(metrics[-1]["cross_entropy"]) > 0


def test_the_training_log_holds_both_parts_of_the_distillation_loss(teacher_run, text_batches, tmp_path):
    run_dir, _ = teacher_run
    _, batches = text_batches
    config = TrainConfig(steps=4, log_every=2, progress=False, checkpoint_every=4, optimizer=OPTIMIZER)
    make = functools.partial(DistillTrainer, teacher=load_teacher(run_dir), distill=DistillConfig(alpha=0.25))
    train(config=CONFIG, run_dir=str(tmp_path / "student"), data=iter(batches), train_config=config,
          make_trainer=make)
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:  # each logged value is the mean over its interval, the loss as its parts
        assert row["kl"] > 0 and row["cross_entropy"] > 0
        assert row["loss"] == pytest.approx(0.25 * 4.0 * row["kl"] + 0.75 * row["cross_entropy"], rel=1e-5)


def test_incompatible_teachers_are_refused_with_the_field_named():
    demo = PRESETS["demo"]
    with pytest.raises(ConfigError, match="vocab_size is 1024, the student's 97"):
        check_compatible(teacher=demo, student=PRESETS["test"])
    with pytest.raises(ConfigError, match="audio encoder and the student has none"):
        check_compatible(teacher=demo, student=dataclasses.replace(demo, audio=None))
    with pytest.raises(ConfigError, match="vision.patch_size"):
        check_compatible(teacher=demo, student=dataclasses.replace(demo, vision=dataclasses.replace(
            demo.vision, patch_size=8)))
    check_compatible(teacher=demo, student=PRESETS["demo-half"])
    check_compatible(teacher=demo.text_only, student=PRESETS["demo-half"])  # extra student encoders are fine
    with pytest.raises(ConfigError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillConfig(temperature=0.0)


def test_a_student_with_another_vocabulary_is_refused(teacher_run, build_model):
    run_dir, _ = teacher_run
    student = build_model(dataclasses.replace(CONFIG, vocab_size=401))
    with pytest.raises(ConfigError, match="share one tokenizer"):
        DistillTrainer(student, OPTIMIZER, teacher=load_teacher(run_dir))


def test_a_missing_teacher_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="teacher: checkpoint directory .* does not exist"):
        load_teacher(tmp_path / "nowhere")
    assert cli.main(["distill", "--teacher", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r")]) == 2
    message = capsys.readouterr().err
    assert "gemini-jax distill: error: teacher:" in message and "nowhere" in message
    assert cli.main(["distill", "--teacher", str(tmp_path), "--run-dir", str(tmp_path / "r")]) == 2
    assert "not a gemini-jax run directory" in capsys.readouterr().err


def test_a_checked_distillation_step_replays_the_distillation_update(teacher_run, build_model, text_batches):
    """checked_step computes the same update as step, the KL included (it replays the
    distillation loss, not the plain one), and a flipped gradient bit is caught."""
    run_dir, _ = teacher_run
    _, batches = text_batches
    teacher = load_teacher(run_dir)
    results = []
    for checked in (False, True):
        trainer = DistillTrainer(fresh(build_model(CONFIG, seed=1)), OPTIMIZER, teacher=teacher,
                                 distill=DistillConfig(alpha=0.5))
        metrics = [trainer.checked_step(b, step=i) if checked else trainer.step(b) for i, b in enumerate(batches[:2])]
        results.append(([(float(m["loss"]), float(m["kl"])) for m in metrics], jax.tree.map(np.array, trainer.params)))
    (plain_metrics, plain_params), (checked_metrics, checked_params) = results
    assert checked_metrics == plain_metrics
    jax.tree.map(np.testing.assert_array_equal, checked_params, plain_params)
    with pytest.raises(replay.SilentDataCorruptionError, match="step 7.*'decoder/blocks/0/attn/q'"):
        trainer.checked_step(batches[2], step=7, corrupt=replay.flip_bit("decoder/blocks/0/attn/q", bit=22))


def test_a_distillation_step_lowers_on_a_mesh_from_abstract_models():
    """Compile-only, as for nano (tests/test_sharding.py): the student and the teacher from
    nnx.eval_shape, nothing allocated; the lowered step takes the teacher's parameters sharded."""
    mesh = sharding.make_mesh(sharding.MeshShape(fsdp=2, tensor=2))
    teacher_config = dataclasses.replace(CONFIG, width=32, depth=3)
    student, teacher = (nnx.eval_shape(lambda c=c: Gemini(c, rngs=nnx.Rngs(0))) for c in (CONFIG, teacher_config))
    trainer = DistillTrainer(student, OPTIMIZER, teacher=teacher, mesh=mesh)
    batch = {k: jax.ShapeDtypeStruct((4, 32), np.float32 if k == "loss_mask" else np.int32)
             for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans", "loss_positions")}
    text = trainer.lower(batch).as_text()
    teacher_q = trainer.teacher_state["decoder"]["blocks"][0]["attn"]["q"].get_value()
    assert isinstance(teacher_q, jax.ShapeDtypeStruct) and teacher_q.sharding.mesh == mesh
    assert "sharding" in text


def test_a_sharded_distillation_step_equals_the_single_device_one(teacher_run, build_model, text_batches):
    """fsdp=2 x tensor=2 over the test's CPU devices, the teacher sharded like the student: the
    same losses and KL as on one device."""
    run_dir, _ = teacher_run
    _, batches = text_batches
    runs = []
    for mesh in (None, sharding.make_mesh(sharding.MeshShape(fsdp=2, tensor=2))):
        trainer = DistillTrainer(fresh(build_model(CONFIG, seed=2)), OPTIMIZER, teacher=load_teacher(run_dir),
                                 mesh=mesh)
        runs.append([(float(m["loss"]), float(m["kl"])) for m in map(trainer.step, batches[:3])])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)


@pytest.mark.slow
def test_a_quantized_teacher_distils_like_its_float_run(teacher_run, build_model, text_batches, tmp_path):
    """The teacher may be an int4 run (`gemini-jax quantize`), which holds it in half a byte
    per weight: its KL to a fresh student is close to the float teacher's, on a mesh as well."""
    from gemini_jax.sample.quantize import quantize_run

    run_dir, _ = teacher_run
    _, batches = text_batches
    quantize_run(run_dir, tmp_path / "int4", group_size=2, bits=4)  # 2 divides every decoder axis of CONFIG
    kls = {}
    for name, teacher_dir, mesh in (("float", run_dir, None), ("int4", tmp_path / "int4", None),
                                    ("int4 sharded", tmp_path / "int4", sharding.make_mesh(sharding.MeshShape(fsdp=2, tensor=2)))):
        trainer = DistillTrainer(fresh(build_model(CONFIG, seed=3)), OPTIMIZER, teacher=load_teacher(teacher_dir),
                                 mesh=mesh, logits_chunk_tokens=64)  # 4 rows of 48 scored positions: chunked
        kls[name] = [float(trainer.step(b)["kl"]) for b in batches[:2]]
    np.testing.assert_allclose(kls["int4"], kls["float"], rtol=0.1)
    np.testing.assert_allclose(kls["int4 sharded"], kls["int4"], rtol=1e-5)
    assert kls["int4"] != kls["float"]  # the teacher really is the quantized one


def test_a_distilled_run_resumes_only_with_its_teacher(teacher_run, tmp_path):
    from gemini_jax.recipes import DemoRecipe, distill_and_evaluate

    run_dir, _ = teacher_run
    student = tmp_path / "student"
    (student / "checkpoints" / "2").mkdir(parents=True)  # a finished step: the run has begun
    (student / "distillation.json").write_text(json.dumps({"teacher": str(tmp_path / "another-teacher")}))
    with pytest.raises(CheckpointError, match="was distilled from .*another-teacher.*resume it with that teacher"):
        distill_and_evaluate(DemoRecipe(run_dir=str(student), model=CONFIG), teacher=str(run_dir))
