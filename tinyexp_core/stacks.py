"""Old import path of `tinyexp_core.progress.stacks`, which it now is: importing this module
binds the same module object (same classes, so pickles and `isinstance` agree) and warns
once with a DeprecationWarning. Import from `tinyexp_core.progress.stacks` instead.
"""

from __future__ import annotations

import sys
import warnings

from tinyexp_core.progress import stacks as _moved

warnings.warn(
    "tinyexp_core.stacks moved to tinyexp_core.progress.stacks; import from there",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
