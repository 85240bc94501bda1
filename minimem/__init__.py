"""minimem: memory-augmented neural networks in plain NumPy, every backward pass derived by hand
and checked by finite differences against an autodiff twin."""

__version__ = "0.1.0"
