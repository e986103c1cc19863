"""Training: optimizer, train state, pure train/eval steps, checkpoints, validation, the loop.

Read in this order: `optim` (AdamW, decay mask, schedules) -> `state` (the TrainState pytree and
its shardings) -> `step` (loss sums, gradient accumulation, one update) -> `validation` (slice
losses) -> `checkpoint` (orbax; `load_for_inference`) -> `setup` (data, model, restore-or-init)
-> `loop` (`train(config, workdir)`). `mfu`, `logging_lib`, `preemption` and `distributed` are
the loop's helpers. Configs are parsed by `treasure_jax.config_loader`.
"""
