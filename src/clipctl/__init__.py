"""clipctl: clip-controlled GRPO experiments on policy entropy (arXiv 2509.26114)."""

__version__ = "0.1.0"
