"""Old import path of `tinyexp_core.training.step_checkpoint`, which it now is: importing this
module binds the same module object (same classes, so pickles and `isinstance` agree) and warns
once with a DeprecationWarning. Import from `tinyexp_core.training.step_checkpoint` instead.
"""

from __future__ import annotations

import sys
import warnings

from tinyexp_core.training import step_checkpoint as _moved

warnings.warn(
    "tinyexp_core.step_checkpoint moved to tinyexp_core.training.step_checkpoint;"
    " import from there",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
