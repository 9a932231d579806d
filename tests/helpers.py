"""What the tests share: the default config, and the settings that shrink it so that a fit takes seconds."""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"

# The article's config, shrunk so that a fit takes a couple of seconds.
SMALL = [
    "--trainer.max_epochs=3",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=5",
    "--data.num_samples=1000",
    "--data.num_val_samples=500",
    "--data.num_test_samples=1000",
    "--data.num_predict_points=101",
    "--data.batch_size=64",
    "--model.optimizer.lr=0.1",
]
