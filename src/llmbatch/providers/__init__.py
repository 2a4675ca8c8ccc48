"""Provider adapters: anthropic, openai (and compatible servers), bedrock, and the offline sim.

``translate_errors`` is the one seam for foreign exceptions: every built-in
provider runs each attempt inside it, and a caller may wrap ``provider.send``
(with its own timeout) in it too.
"""

from llmbatch.providers._errors import translate_errors

__all__ = ["translate_errors"]
