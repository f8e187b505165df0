"""Library chatter (transformers/peft deprecation warnings, hub progress bars) hides fedlsm's own
output; the CLI and the benchmark's cell processes silence it. ``FEDLSM_DEBUG=1`` keeps it."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    if os.environ.get("FEDLSM_DEBUG"):
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass
