"""gradcheck: central finite differences in float64, the executable specification of minimem.

    check(f, inputs, grad)            your own NumPy function's gradient against central differences
    check_model(case)                 a minimem model's manual and autodiff engines (python -m gradcheck)
    make_golden / export / load_golden    golden vectors of the registered cases (python -m gradcheck export)
    compare(case, adapter)            a foreign implementation against them (python -m gradcheck compare)
"""

from gradcheck.check import Report, check
from gradcheck.compare import compare, load_adapter
from gradcheck.core import (Case, assert_grads_close, check_model, numeric_grad, numeric_vjp,
                            projection_loss)
from gradcheck.golden import Golden, diff_golden, export, load_golden, make_golden, select_cases, write_golden

__all__ = ["Case", "Golden", "Report", "assert_grads_close", "check", "check_model", "compare", "diff_golden",
           "export", "load_adapter", "load_golden", "make_golden", "numeric_grad", "numeric_vjp",
           "projection_loss", "select_cases", "write_golden"]
