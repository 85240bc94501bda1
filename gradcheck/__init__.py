"""gradcheck: central finite differences in float64, the executable specification of minimem."""

from gradcheck.core import (Case, assert_grads_close, check_model, numeric_grad, numeric_vjp,
                            projection_loss)

__all__ = ["Case", "assert_grads_close", "check_model", "numeric_grad", "numeric_vjp", "projection_loss"]
