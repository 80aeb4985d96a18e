"""MIND in PyTorch: configuration, modules, loss, training (1..N processes), evaluation,
baselines and inference of user vectors."""
