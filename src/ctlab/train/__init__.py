"""Stage 4: pretraining (dense, MoE, MH-MoE), LayerSkip, continual pretraining, checkpoints, data parallelism."""
