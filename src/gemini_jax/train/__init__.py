"""Training: the Trainer (trainer.py) and its loop (loop.py), configured by a TrainConfig
(config.py); the optimizer, the loss, checkpoints and resume, metrics, and the guards
(the replay check for silent data corruption, the in-memory replica); LoRA adapters (lora.py).

    from gemini_jax.train import TrainConfig, train
    result = train(config=model_config, run_dir="runs/mine", data=batches, train_config=TrainConfig(steps=500))
"""

from gemini_jax.train.batches import loss_positions_width, with_loss_positions
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.lora import (
    LoraConfig,
    LoraTrainer,
    adapter_state,
    apply_lora,
    load_adapter_state,
    merge_lora,
)
from gemini_jax.train.loop import TrainResult, train
from gemini_jax.train.trainer import Trainer

__all__ = ["LoraConfig", "LoraTrainer", "TrainConfig", "TrainResult", "Trainer", "adapter_state", "apply_lora",
           "load_adapter_state", "loss_positions_width", "merge_lora", "train", "with_loss_positions"]
