"""How prompts become the token ids a model sees: the one `chat_template` field.

Every command that reads prompts (rejuvenate's calibration, diagnose, rl, and through them tune
and the demo) inherits `PromptFormat`, so the YAML key stays flat (`chat_template: always`) and
the field is declared once. The rendering itself is `rayrejuv.data.chat`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rayrejuv.config.base import Config

ChatTemplate = Literal["auto", "always", "never"]


class PromptFormat(Config):
    chat_template: ChatTemplate = Field(
        "auto",
        description="auto: conversational rows (prompt = [{role, content}, ...]) through the tokenizer's chat "
        "template, plain-string prompts as they are (TRL's convention); always: a plain prompt too, as one user "
        "turn; never: no template (a prompt rendered by hand)",
    )
