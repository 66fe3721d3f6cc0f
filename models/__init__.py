"""BERT in plain PyTorch: config, model and heads, the original WordPiece tokenizer, and readers and
writers for Google's and Hugging Face's checkpoints. Imports torch and nothing distributed.

Names are imported on first use, so `import models.tokenization` alone does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BertConfig": "models.config", "ConfigError": "models.config",
    "BertModel": "models.bert", "BertForPreTraining": "models.bert",
    "BertForSequenceClassification": "models.bert", "BertForQuestionAnswering": "models.bert",
    "BertForTokenClassification": "models.bert",
    "FullTokenizer": "models.tokenization",
    "load_pretrained": "models.checkpoints",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from models.bert import (BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
                             BertForTokenClassification, BertModel)
    from models.checkpoints import load_pretrained
    from models.config import BertConfig, ConfigError
    from models.tokenization import FullTokenizer


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
