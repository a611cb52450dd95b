"""moe-profiler's SLURM launcher (`hydra/launcher=slurm`, `slurm_cpu`); its logic lives in runner/slurm/."""
