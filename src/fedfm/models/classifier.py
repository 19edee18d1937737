"""A BERT encoder with mean pooling and a linear head.

all-MiniLM-L6-v2 is a sentence-transformers checkpoint trained with mean pooling over the
attention mask (its `1_Pooling/config.json`); its BERT pooler (CLS + dense + tanh) was never
trained, so `BertForSequenceClassification` starts from a useless feature. This class keeps
the checkpoint's own pooling. It is a `PreTrainedModel`, so PEFT's functional API (LoRA,
prompt tuning with task type SEQ_CLS) works on it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolClassifier(BertPreTrainedModel):
    """BERT encoder -> masked mean of the last hidden states -> linear head.

    Args:
        config: a `BertConfig` with `num_labels` set.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = torch.nn.Linear(config.hidden_size, config.num_labels or 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Classify a batch.

        Args:
            input_ids: [batch, seq] token ids (or pass `inputs_embeds`).
            attention_mask: [batch, seq] 1 for real tokens, 0 for padding.
            token_type_ids: [batch, seq] segment ids (optional).
            inputs_embeds: [batch, seq, hidden] embeddings (prompt tuning passes these).
            labels: [batch] class ids; when given, the output carries the mean CE loss.
            **kwargs: ignored keyword arguments PEFT passes along.

        Returns:
            `SequenceClassifierOutput` with `logits` [batch, num_labels] and optional `loss`.
        """
        del kwargs
        hidden = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        ).last_hidden_state  # [batch, seq, hidden]
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
