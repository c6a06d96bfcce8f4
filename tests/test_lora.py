"""LoRA (train/lora.py): a fresh adapter changes nothing, training moves only the adapters,
merging keeps the logits, every targeted weight gets its adapter (k and v under multi-query
attention too), and bad settings or adapter states are refused with clear errors."""

import dataclasses
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import greedy_continuation
from gemini_jax import checkpoint, sharding
from gemini_jax.digests import digests
from gemini_jax.cli import main
from gemini_jax.cli.flags import LORA_TARGETS
from gemini_jax.config import PRESETS, override
from gemini_jax.data.prepare.pipeline import PrepareOptions
from gemini_jax.data.prepare.pipeline import prepare as prepare_data
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.model import Gemini
from gemini_jax.train.batches import model_inputs, with_loss_positions
from gemini_jax.train.lora import (
    TARGETS,
    LoraConfig,
    LoraError,
    LoraTrainer,
    LoraWeight,
    adapter_state,
    apply_lora,
    check_adapters,
    freeze_base,
    load_adapter_state,
    lora_weights,
    merge_lora,
    start_lora,
)
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.policy_gradient import PolicyGradientTrainer
from gemini_jax.train.trainer import Trainer
from random_batches import random_text_batch
from test_custom_recipe import digits_example
from test_preferences import pair, write_jsonl

CONFIG = PRESETS["test"]
MQA = dataclasses.replace(CONFIG.text_only, num_kv_heads=1)
LORA = LoraConfig(rank=3, alpha=6.0)
OPTIMIZER = OptimizerConfig(learning_rate=1e-2, warmup_steps=1, total_steps=20)


def logits(model, batch):
    return np.asarray(nnx.jit(lambda m, b: m(b).logits)(model, model_inputs(with_loss_positions(batch))))


def randomized(model, seed=0):
    """`model`'s adapters with random nonzero A and B (a trained adapter, without training)."""
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), jnp.float32), adapter_state(model))
    load_adapter_state(model, state)
    return model


def frozen_params(model):
    """{path: array} of every nnx.Param that is not an adapter, paths as in the plain model
    (an adapted weight's 'base' step dropped)."""
    state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    return {tuple(str(k) for k in path if k != "base"): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(state)}


def test_a_fresh_adapter_gives_exactly_the_base_logits(build_model):
    base = build_model(CONFIG)
    adapted = apply_lora(base, LORA, nnx.Rngs(1))
    batch = random_text_batch(CONFIG.vocab_size, rows=2, length=12)
    np.testing.assert_array_equal(logits(adapted, batch), logits(base, batch))
    assert not lora_weights(base)  # the input model is left as it was


def test_training_moves_only_the_adapters_and_leaves_the_base_bit_identical(build_model):
    base = build_model(CONFIG)
    adapted = apply_lora(base, LORA, nnx.Rngs(1))
    before = jax.tree.map(np.array, adapter_state(adapted))
    trainer = LoraTrainer(adapted, OPTIMIZER)
    losses = [float(trainer.step(random_text_batch(CONFIG.vocab_size, seed=i))["loss"]) for i in range(4)]
    assert all(np.isfinite(losses))
    trained = trainer.model
    expected = frozen_params(base)
    got = frozen_params(trained)
    assert got.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg=".".join(path))
    after = adapter_state(trained)
    for (path, old), new in zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after), strict=True):
        assert not np.array_equal(old, np.asarray(new)), f"adapter {jax.tree_util.keystr(path)} did not train"
    # The optimizer holds the adapters alone.
    trained_count = sum(x.size for x in jax.tree.leaves(trainer.params))
    assert trained_count == sum(np.size(x) for x in jax.tree.leaves(after))


def test_merged_and_unmerged_adapters_give_the_same_logits(build_model):
    base = build_model(CONFIG)
    adapted = randomized(apply_lora(base, LORA, nnx.Rngs(1)))
    merged = merge_lora(adapted)
    batch = random_text_batch(CONFIG.vocab_size, rows=2, length=12)
    unmerged_logits = logits(adapted, batch)
    np.testing.assert_allclose(logits(merged, batch), unmerged_logits, atol=1e-5, rtol=1e-5)
    assert np.abs(unmerged_logits - logits(base, batch)).max() > 1e-2  # the adapters matter
    # A plain model: no adapter left, the base model's parameter paths, shapes and dtypes.
    assert not lora_weights(merged) and not nnx.state(merged, nnx.LoRAParam)
    plain = jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(nnx.state(merged, nnx.Param)))
    assert plain == jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(nnx.state(base, nnx.Param)))
    # o [N, H, D] contracts two axes: W + (alpha / rank) * A[N, H, r] @ B[r, D].
    o = adapted.decoder.blocks[1].attn.o
    expected = np.asarray(o.base[...]) + 2.0 * np.einsum("nhr,rd->nhd", o.lora_a[...], o.lora_b[...])
    np.testing.assert_allclose(np.asarray(merged.decoder.blocks[1].attn.o[...]), expected, atol=1e-6)


def test_every_targeted_weight_has_its_adapter_under_multi_query_attention(build_model):
    model = build_model(MQA)
    adapted = apply_lora(model, LORA, nnx.Rngs(1))
    weights = lora_weights(adapted)
    assert len(weights) == MQA.depth * len(TARGETS)
    assert len(jax.tree.leaves(adapter_state(adapted))) == 2 * MQA.depth * len(TARGETS)
    for i in range(MQA.depth):
        for name, (layer_type, _) in TARGETS.items():
            layer = "attn" if layer_type.__name__ == "Attention" else "mlp"
            weight = weights[f"decoder.blocks.{i}.{layer}.{name}"]
            assert weight.lora_a.shape[-1] == weight.lora_b.shape[0] == LORA.rank
            assert weight.delta().shape == weight.base.shape
    k = weights["decoder.blocks.0.attn.k"]
    assert k.lora_b.shape == (LORA.rank, 1, MQA.head_dim)  # one key/value head
    # A subset adapts only what it names; the check finds a weight that lost its adapter.
    only_kv = LoraConfig(rank=2, alpha=2.0, targets=("k", "v"))
    kv = apply_lora(model, only_kv, nnx.Rngs(1))
    assert sorted(lora_weights(kv)) == sorted(f"decoder.blocks.{i}.attn.{n}" for i in range(MQA.depth) for n in "kv")
    kv.decoder.blocks[1].attn.v = kv.decoder.blocks[1].attn.v.base
    with pytest.raises(LoraError, match=r"decoder\.blocks\.1\.attn\.v"):
        check_adapters(kv, only_kv)


def test_the_encoders_get_no_adapters(build_model):
    adapted = apply_lora(build_model(CONFIG), LORA, nnx.Rngs(1))
    assert all(path.startswith("decoder.") for path in lora_weights(adapted))


@pytest.mark.parametrize("changes, message", [
    ({"targets": ("q", "wq")}, r"unknown LoRA target\(s\) 'wq'; accepted: q, k, v, o, gate, up, down"),
    ({"targets": "q"}, "tuple of names"),
    ({"targets": ()}, "at least one target"),
    ({"rank": 0}, "rank must be an integer >= 1, got 0"),
    ({"rank": 2.5}, "rank must be an integer"),
    ({"alpha": 0.0}, "alpha must be a number > 0"),
])
def test_bad_settings_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**changes)


def test_an_adapter_is_not_stacked_on_another(build_model):
    adapted = apply_lora(build_model(MQA), LORA, nnx.Rngs(1))
    with pytest.raises(LoraError, match="already has a LoRA adapter"):
        apply_lora(adapted, LORA, nnx.Rngs(2))


def test_adapter_state_round_trips_and_refuses_another_shape(build_model):
    model = build_model(MQA)
    trained = randomized(apply_lora(model, LORA, nnx.Rngs(1)), seed=3)
    saved = jax.tree.map(np.asarray, adapter_state(trained))
    # A checkpoint may give the blocks' integer keys back as strings.
    saved["decoder"]["blocks"] = {str(k): v for k, v in saved["decoder"]["blocks"].items()}
    restored = apply_lora(model, LORA, nnx.Rngs(7))
    load_adapter_state(restored, saved)
    batch = random_text_batch(MQA.vocab_size, rows=2, length=12)
    np.testing.assert_array_equal(logits(restored, batch), logits(trained, batch))
    with pytest.raises(LoraError, match=r"decoder\.blocks\.0\.attn\.k\.lora_a has shape \(24, 3\).*\(24, 5\)"):
        load_adapter_state(apply_lora(model, LoraConfig(rank=5, alpha=5.0), nnx.Rngs(1)), saved)
    with pytest.raises(LoraError, match="no adapter for"):
        load_adapter_state(apply_lora(model, LoraConfig(rank=3, alpha=6.0, targets=("q",)), nnx.Rngs(1)), saved)


def test_prefill_and_decode_see_the_adapters(build_model):
    """Every path through the model reads the adapted weights, not only __call__."""
    adapted = randomized(apply_lora(build_model(MQA), LORA, nnx.Rngs(1)), seed=5)
    prompt = {k: v[:1] for k, v in random_text_batch(MQA.vocab_size, rows=1, length=6).items()}
    prompt = {k: prompt[k] for k in ("tokens", "segment_ids", "positions", "media_spans")}
    assert greedy_continuation(adapted, prompt, 4) == greedy_continuation(merge_lora(adapted), prompt, 4)


def test_a_bfloat16_frozen_base_trains_its_adapters_and_stays_unchanged(build_model):
    adapted = freeze_base(apply_lora(build_model(MQA), LORA, nnx.Rngs(1)))
    assert adapted.decoder.blocks[0].mlp.up.base.get_value().dtype == jnp.bfloat16
    assert adapted.decoder.blocks[0].pre_mlp_norm.scale.get_value().dtype == jnp.float32
    before = frozen_params(adapted)
    trainer = LoraTrainer(adapted, OPTIMIZER)
    losses = [float(trainer.step(random_text_batch(MQA.vocab_size, seed=i))["loss"]) for i in range(3)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    after = frozen_params(trainer.model)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=".".join(path))


def test_a_lora_step_lowers_on_a_mesh_from_an_abstract_model():
    """Compile-only: the adapters take their weights' logical axes, so a mesh shards them too."""
    mesh = sharding.make_mesh(sharding.MeshShape(fsdp=2, tensor=2))
    abstract = nnx.eval_shape(lambda: apply_lora(Gemini(MQA, rngs=nnx.Rngs(0)), LORA, nnx.Rngs(1)))
    trainer = LoraTrainer(abstract, OPTIMIZER, mesh=mesh)
    batch = {k: jax.ShapeDtypeStruct((4, 32), np.float32 if k == "loss_mask" else np.int32)
             for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans", "loss_positions")}
    assert "sharding" in trainer.lower(batch).as_text()
    up_b = trainer.params["decoder"]["blocks"][0]["mlp"]["up"]["lora_b"].get_value()
    assert up_b.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")  # [r, F]: F over tensor


def test_a_lora_trainer_needs_adapters(build_model):
    with pytest.raises(LoraError, match="apply_lora"):
        LoraTrainer(build_model(MQA), OPTIMIZER)


def test_lora_weight_reads_as_base_plus_scaled_product():
    base = nnx.Param(jnp.arange(12, dtype=jnp.float32).reshape(3, 4))
    weight = LoraWeight(base, input_axes=1, rank=2, scale=0.5, rngs=nnx.Rngs(0))
    weight.lora_b[...] = jnp.ones((2, 4), jnp.float32)
    expected = np.asarray(base[...]) + 0.5 * np.asarray(weight.lora_a[...]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(weight.get_value()), expected, rtol=1e-6)


# LoRA runs: adapter-only checkpoints on a recorded base, loaded merged by every command.

def write_base_run(run_dir, config, tokenizer_file, *, seed=0):
    """A run directory holding a fresh model of `config` (step 1), as --init-from reads one."""
    trainer = Trainer(Gemini(config, rngs=nnx.Rngs(seed)), OptimizerConfig(total_steps=1))
    checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)
    saver = checkpoint.Checkpointer(run_dir, async_save=False)
    saver.save(1, state=trainer.state(), meta={"step": 1})
    saver.close()
    return trainer.model


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A tokenizer file for the run directories (the tests feed token ids, never text)."""
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    train_tokenizer(["the quick brown fox jumps over the lazy dog 0123456789"] * 20, vocab_size=400, path=path)
    return path


def trained_lora_run(tmp_path, tokenizer_file, lora=LORA, steps=3):
    """(base model, LoraTrainer after `steps` steps) of a LoRA run in tmp_path/lora on a base run
    in tmp_path/base, its adapters checkpointed as training saves them."""
    base = write_base_run(tmp_path / "base", MQA, tokenizer_file)
    model = start_lora(Gemini(MQA, rngs=nnx.Rngs(9)), lora, run_dir=tmp_path / "lora", init_from=tmp_path / "base")
    trainer = LoraTrainer(model, OPTIMIZER)
    for i in range(steps):
        trainer.step(random_text_batch(MQA.vocab_size, seed=i))
    checkpoint.write_run_files(tmp_path / "lora", config=MQA, tokenizer_path=tokenizer_file)
    saver = checkpoint.Checkpointer(tmp_path / "lora", async_save=False)
    saver.save(steps, state=trainer.state(), meta={"step": steps})
    saver.close()
    return base, trainer


def test_a_lora_run_saves_only_its_adapters_and_loads_merged_onto_its_base(tmp_path, tokenizer_file):
    base, trainer = trained_lora_run(tmp_path, tokenizer_file)
    run = tmp_path / "lora"
    record = json.loads((run / "lora.json").read_text())
    assert record["lora"] == {"rank": 3, "alpha": 6.0, "targets": list(TARGETS)}
    assert record["base"]["run_dir"] == str(tmp_path / "base") and record["base"]["step"] == 1
    # The checkpoint holds the adapters and their optimizer state, no base weight.
    saved = checkpoint.Checkpointer(run).read_meta(3)["digests"]
    params = {k.removeprefix("params/") for k in saved if k.startswith("params/")}
    assert params == set(digests(adapter_state(trainer.model)))
    assert all(k.rsplit("/", 1)[1] in ("lora_a", "lora_b") for k in params)
    assert not any("embedder" in k or "norm" in k for k in saved)
    # Training left the base as it was.
    for path, value in frozen_params(base).items():
        np.testing.assert_array_equal(frozen_params(trainer.model)[path], value, err_msg=".".join(path))
    # Every command's loader gives base + adapters, merged: the trained model's logits.
    loaded = checkpoint.load_run(run)
    assert loaded.step == 3 and not lora_weights(loaded.model)
    batch = random_text_batch(MQA.vocab_size, rows=2, length=12, seed=11)
    np.testing.assert_allclose(logits(loaded.model, batch), logits(trainer.model, batch), atol=1e-5, rtol=1e-5)
    assert np.abs(logits(loaded.model, batch) - logits(base, batch)).max() > 1e-3  # the adapters trained


def test_a_lora_run_refuses_a_changed_base_and_other_settings(tmp_path, tokenizer_file):
    trained_lora_run(tmp_path, tokenizer_file, steps=1)
    fresh = lambda: Gemini(MQA, rngs=nnx.Rngs(0))
    with pytest.raises(LoraError, match=r"other settings \(rank 3 -> 4; alpha 6.0 -> 8.0\)"):
        start_lora(fresh(), LoraConfig(rank=4, alpha=8.0), run_dir=tmp_path / "lora", init_from=tmp_path / "base")
    write_base_run(tmp_path / "other", MQA, tokenizer_file)
    with pytest.raises(LoraError, match=r"base run .*base' -> .*other'"):
        start_lora(fresh(), LORA, run_dir=tmp_path / "lora", init_from=tmp_path / "other")
    # The base run's step 1 now holds other parameters: the adapters no longer fit it.
    shutil.rmtree(tmp_path / "base" / "checkpoints")
    write_base_run(tmp_path / "base", MQA, tokenizer_file, seed=5)
    changed = r"base'.* step 1, whose parameters have changed since .*decoder/blocks/0/attn/k.* differ"
    with pytest.raises(checkpoint.CheckpointError, match=changed):
        checkpoint.load_run(tmp_path / "lora")
    with pytest.raises(checkpoint.CheckpointError, match=changed):
        start_lora(fresh(), LORA, run_dir=tmp_path / "lora", init_from=tmp_path / "base")


def test_a_target_the_decoder_has_no_layer_for_is_named(build_model, monkeypatch):
    monkeypatch.setitem(TARGETS, "proj", (nnx.Linear, 1))  # a layer type the decoder does not use
    with pytest.raises(LoraError, match=r"no layer for LoRA target\(s\) 'proj'; accepted: q, k, v, o, gate, up, "
                                        r"down, proj"):
        apply_lora(build_model(MQA), LoraConfig(rank=2, alpha=2.0, targets=("q", "proj")), nnx.Rngs(1))


@pytest.mark.parametrize("argv, message", [
    (["--lora-rank", "4", "--lora-targets", "q,wq"],
     r"unknown LoRA target\(s\) 'wq'; accepted \(comma-separated\): q,k,v,o,gate,up,down"),
    (["--lora-alpha", "8"], "give --lora-rank R too"),
    (["--lora-rank", "4"], "--lora-rank adapts a trained model: give --data MIXTURE --init-from RUN_DIR"),
    (["--lora-rank", "0"], "must be 1 or more"),
])
def test_lora_flags_are_checked_before_anything_loads(argv, message, capsys):
    assert main(["train", "--data", "mix.yaml", *argv]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_the_flags_name_the_targets_the_model_has():
    assert LORA_TARGETS == tuple(TARGETS)


def test_train_with_lora_flags_trains_adapters_and_resumes(tmp_path, capsys):
    digits = tmp_path / "digits"
    digits_example().write(digits, limit=24)
    options = PrepareOptions(vocab_size=400, validation_fraction=0.15, decontaminate=False, near_dedup=False)
    prepare_data([str(digits / "train.jsonl")], str(digits / "prepared"), options, progress=False)
    config = override(PRESETS["test"], vocab_size=Tokenizer.load(digits / "prepared" / "tokenizer.model").vocab_size)
    write_base_run(tmp_path / "base", config, digits / "prepared" / "tokenizer.model")
    run = tmp_path / "lora"
    argv = ["train", "--data", str(digits / "mixture.yaml"), "--init-from", str(tmp_path / "base"), "--run-dir",
            str(run), "--batch-size", "4", "--seq-len", "64", "--no-eval", "--no-progress", "--learning-rate", "1e-2"]
    lora = ["--lora-rank", "2", "--lora-alpha", "3", "--lora-targets", "q,v"]
    assert main([*argv, *lora, "--steps", "2"]) == 0
    assert json.loads((run / "lora.json").read_text())["lora"] == {"rank": 2, "alpha": 3.0, "targets": ["q", "v"]}
    saved = checkpoint.Checkpointer(run).read_meta(2)["digests"]
    assert {k.split("/")[-2] for k in saved if k.startswith("params/")} == {"q", "v"}
    assert main([*argv, *lora, "--steps", "3"]) == 0
    # Resumed from step 2: a fresh start would have cleared step 2's record from the log.
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(steps)) == [2, 3]
    assert checkpoint.load_run(run).step == 3
    capsys.readouterr()
    assert main([*argv, "--steps", "4"]) == 2  # resumed without its LoRA flags
    assert "is a LoRA run: resume it with the --lora-rank" in capsys.readouterr().err
    assert main([*argv, *lora[:2], "--steps", "4"]) == 2  # or with others
    assert "other settings (alpha 3.0 -> 4.0; targets ['q', 'v'] -> ['q', 'k'," in capsys.readouterr().err


def test_a_lora_step_with_a_chunked_loss_matches_the_unchunked_one(build_model):
    batch = random_text_batch(MQA.vocab_size, rows=2, length=12)
    steps = [LoraTrainer(randomized(apply_lora(build_model(MQA), LORA, nnx.Rngs(1))), OPTIMIZER,
                         logits_chunk_tokens=chunk) for chunk in (None, 5)]  # each its own arrays: steps donate them
    metrics = [trainer.step(batch) for trainer in steps]
    np.testing.assert_allclose(float(metrics[1]["loss"]), float(metrics[0]["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics[1]["grad_norm"]), float(metrics[0]["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(adapter_state(steps[0].model)), jax.tree.leaves(adapter_state(steps[1].model))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_dpo_with_lora_flags_trains_adapters_on_its_base(tmp_path, tokenizer_file):
    config = dataclasses.replace(PRESETS["test"], vocab_size=Tokenizer.load(tokenizer_file).vocab_size)
    base = write_base_run(tmp_path / "base", config, tokenizer_file)
    records = [pair(f"Is there a {c} {s}?", f"Yes, there is a {c} {s}.", "Yes.")
               for c in ["red", "blue", "green", "black"] for s in ["circle", "square", "triangle"]]
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    run = tmp_path / "dpo"
    assert main(["dpo", "--data", str(data), "--init-from", str(tmp_path / "base"), "--run-dir", str(run),
                 "--batch-size", "4", "--steps", "3", "--learning-rate", "1e-2", "--validation-fraction", "0.25",
                 "--test-fraction", "0.25", "--no-progress", "--no-eval", "--lora-rank", "2"]) == 0
    assert json.loads((run / "lora.json").read_text())["lora"] == {"rank": 2, "alpha": 4.0, "targets": list(TARGETS)}
    saved = checkpoint.Checkpointer(run).read_meta(3)["digests"]
    assert all(k.rsplit("/", 1)[1] in ("lora_a", "lora_b") for k in saved if k.startswith("params/"))
    batch = random_text_batch(config.vocab_size, rows=2, length=12)
    assert np.abs(logits(checkpoint.load_run(run).model, batch) - logits(base, batch)).max() > 1e-4


@pytest.mark.slow
def test_rl_with_lora_flags_writes_an_adapter_only_run(tmp_path, tokenizer_file):
    config = dataclasses.replace(PRESETS["test"], vocab_size=Tokenizer.load(tokenizer_file).vocab_size)
    write_base_run(tmp_path / "base", config, tokenizer_file)
    lines = [{"contents": [{"role": "user", "parts": [{"text": f"Is there a {c} {s}?"}]},
                           {"role": "model", "parts": [{"text": "yes" if s == "circle" else "no"}]}]}
             for c in ["red", "blue", "green", "black"] for s in ["circle", "square", "triangle"]]
    data = write_jsonl(tmp_path / "prompts.jsonl", lines)
    run = tmp_path / "rl"
    assert main(["rl", "--data", str(data), "--init-from", str(tmp_path / "base"), "--run-dir", str(run),
                 "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "3", "--steps", "2",
                 "--learning-rate", "1e-2", "--validation-fraction", "0.25", "--test-fraction", "0.25",
                 "--no-progress", "--no-eval", "--lora-rank", "2", "--lora-targets", "q,v,down"]) == 0
    assert json.loads((run / "lora.json").read_text())["lora"]["targets"] == ["q", "v", "down"]
    saved = checkpoint.Checkpointer(run).read_meta(2)["digests"]
    assert {k.split("/")[-2] for k in saved if k.startswith("params/")} == {"q", "v", "down"}
    assert checkpoint.load_run(run).step == 2
    # (A fresh model earns no exact-match reward, so these steps have no advantage to learn
    # from; the next test trains a LoRA policy on rewarded rollouts.)


def test_a_lora_policy_learns_from_advantages_and_keeps_its_base(build_model):
    batch = {**random_text_batch(MQA.vocab_size, rows=2, length=12), "rewards": np.array([1, 0], np.float32),
             "advantages": np.array([1, -1], np.float32)}
    policy = apply_lora(build_model(MQA), LORA, nnx.Rngs(1))
    before, base = jax.tree.map(np.array, adapter_state(policy)), frozen_params(policy)
    trainer = PolicyGradientTrainer(policy, OPTIMIZER, reference=build_model(MQA), trainable=nnx.LoRAParam)
    for _ in range(2):  # the warm-up's first step has a learning rate of 0
        trainer.step(batch)
    assert sum(x.size for x in jax.tree.leaves(trainer.params)) == sum(x.size for x in jax.tree.leaves(before))
    assert not all(np.array_equal(a, np.asarray(b)) for a, b in
                   zip(jax.tree.leaves(before), jax.tree.leaves(adapter_state(trainer.model))))
    for path, value in base.items():
        np.testing.assert_array_equal(frozen_params(trainer.model)[path], value, err_msg=".".join(path))
