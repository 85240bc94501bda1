"""gradcheck: central finite differences in float64, the executable specification of minimem."""

from gradcheck.core import assert_grads_close, numeric_grad, numeric_vjp

__all__ = ["assert_grads_close", "numeric_grad", "numeric_vjp"]
