"""ablation: run, resume and report ablation studies of rotation pretraining for ResNet18 on CIFAR-10."""

__version__ = "0.2.0"
