"""Runnable recipes: mnist_exp (CNN), resnet_exp (ResNet, Redis cache), pi_exp (Monte Carlo)."""
