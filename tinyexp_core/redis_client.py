"""Old import path of `tinyexp_core.services.redis_client`, which it now is: importing this module
binds the same module object (same classes, so pickles and `isinstance` agree) and warns
once with a DeprecationWarning. Import from `tinyexp_core.services.redis_client` instead.
"""

from __future__ import annotations

import sys
import warnings

from tinyexp_core.services import redis_client as _moved

warnings.warn(
    "tinyexp_core.redis_client moved to tinyexp_core.services.redis_client; import from there",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
