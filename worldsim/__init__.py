"""Cross-stage pieces of worldsim: the `worldsim` console command, config loading, shared layers."""
