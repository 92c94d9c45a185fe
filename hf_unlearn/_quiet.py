"""Known, harmless dependency messages, silenced where they are emitted; nothing else is filtered.

- transformers logs, once per processor class, that an `...ImageProcessor` needs torchvision and that it falls back
  to the PIL implementation (`...ImageProcessorPil`); the fallback computes the same `pixel_values`, and hf_unlearn
  does not depend on torchvision. It is a logging record, so a logging filter on that one logger drops it.
- peft asks a transformers model for `is_gradient_checkpointing`, a property transformers 5 deprecated with a
  `FutureWarning` the user can do nothing about.

Both filters match the message text, so any other message of these libraries still shows.
"""

from __future__ import annotations

import logging
import re
import warnings

TORCHVISION_FALLBACK = re.compile(
    r"`\w*ImageProcessor` requires torchvision \(not installed\); falling back to `\w*ImageProcessorPil`"
)
GRADIENT_CHECKPOINTING_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


class DropMatching(logging.Filter):
    """A logging filter that drops the records whose message matches `pattern`."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Installs both filters (idempotent)."""
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, DropMatching) for f in logger.filters):
        logger.addFilter(DropMatching(TORCHVISION_FALLBACK))
    warnings.filterwarnings(
        "ignore",
        message=GRADIENT_CHECKPOINTING_DEPRECATION,
        category=FutureWarning,
        module=r"transformers\.modeling_utils",
    )


install()
