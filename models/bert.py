"""BERT in plain PyTorch: embeddings, encoder, pooler and the task heads of the original release.

Shape legend, used in every docstring below (as in the original modeling.py):
    B  batch size            T  sequence length (from = to, BERT is self-attention only)
    H  hidden size           N  attention heads        D  head size (H / N)
    I  intermediate size     V  vocabulary size        P  masked positions per sequence

Parameter names are Hugging Face's (`bert.encoder.layer.0.attention.self.query.weight`, ...) so
its checkpoints load with no renaming; Google TF variables map onto them in checkpoints.py.
Nothing here knows about distribution, storage or logging: this file imports torch only.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from models.config import BertConfig

_ACTIVATIONS = {
    # The original BERT's gelu is the tanh approximation; Hugging Face's "gelu" is erf.
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "tanh": torch.tanh,
}


def _dropout(x: Tensor, p: float, training: bool, residual: Tensor | None = None) -> Tensor:
    """Inverted dropout of x (zero with probability p, else x / (1 - p)), plus residual if given.

    On CPU, torch's dropout draws its mask with bernoulli_: ~6 ns an element, on one thread even
    when torch has more (~5% of a 6-layer/384 BERT's train step on one thread). Here each 64-bit
    draw from the same generator (so torch.manual_seed and checkpoint recomputation still replay
    it) gives two 32-bit uniforms, each kept when below (1 - p) * 2^32: the same Bernoulli mask,
    to 2^-32, for ~40% of the cost, and the residual add rides along in one addcmul.
    Other devices have fused dropout kernels and keep F.dropout.
    """
    if training and p > 0.0 and x.device.type == "cpu":
        n = x.numel()
        bits = torch.randint(-2**63, 2**63 - 1, ((n + 1) // 2,), dtype=torch.int64)  # every int64, evenly
        threshold = min(round((1.0 - p) * 2**32), 2**32 - 1) - 2**31
        keep = bits.view(torch.int32)[:n].view(x.shape) < threshold
        noise = torch.where(keep, 1.0 / (1.0 - p) if p < 1.0 else 0.0, 0.0).to(x.dtype)
        return x * noise if residual is None else torch.addcmul(residual, x, noise)
    x = F.dropout(x, p, training)
    return x if residual is None else x + residual


@dataclasses.dataclass
class BertOutput:
    """What BertModel returns.

    Attributes:
        sequence_output: float [B, T, H], the last layer ([B, P, H] when output_positions were given).
        pooled_output: float [B, H], tanh(dense(first token)).
        all_encoder_layers: every layer's output, L tensors of [B, T, H], when asked for.
    """

    sequence_output: Tensor
    pooled_output: Tensor
    all_encoder_layers: list[Tensor] | None = None


@dataclasses.dataclass
class PreTrainingOutput:
    """What BertForPreTraining returns; losses are None when no labels were given."""

    masked_lm_log_probs: Tensor  # float [B * P, V]
    next_sentence_log_probs: Tensor  # float [B, 2]
    loss: Tensor | None = None
    masked_lm_loss: Tensor | None = None
    next_sentence_loss: Tensor | None = None
    bert: BertOutput | None = None  # in training, sequence_output holds only the masked positions


@dataclasses.dataclass
class TaskOutput:
    """What the fine-tuning heads return: `logits` and, given labels, `loss`."""

    logits: Tensor
    loss: Tensor | None = None
    bert: BertOutput | None = None


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        """int [B, T] ids and segment ids -> float [B, T, H]."""
        positions = self.position_embeddings.weight[: input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids) + positions
        return _dropout(self.LayerNorm(x), self.dropout.p, self.training)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def forward(self, x: Tensor, mask_bias: Tensor, rows: Tensor | None = None) -> Tensor:
        """float [B, T, H] and additive mask [B, 1, 1, T] -> context float [B, T, H].

        rows: float [B, R, H], when given, the only rows whose context is wanted (queries come
            from them; keys and values still from all of x): the context is then [B, R, H].
        """
        rows = x if rows is None else rows
        b, h = x.shape[0], x.shape[2]

        def heads(proj: nn.Linear, source: Tensor) -> Tensor:  # [B, T, H] -> [B, N, T, D]
            return proj(source).view(b, source.shape[1], self.num_heads, h // self.num_heads).transpose(1, 2)

        q, k, v = heads(self.query, rows), heads(self.key, x), heads(self.value, x)
        p = self.dropout_prob if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu":
            # SDPA has no fused CPU kernel with dropout and falls back to this same math; written
            # out, its dropout mask comes from _dropout's cheaper draws.
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
            if mask_bias is not None:
                scores = scores.add_(mask_bias)
            context = torch.matmul(_dropout(torch.softmax(scores, -1), p, True), v)
        else:
            # SDPA picks flash / memory-efficient kernels on GPU and a fused kernel on CPU.
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias, dropout_p=p)
        return context.transpose(1, 2).reshape(b, rows.shape[1], h)


class BertDenseOutput(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm; used after attention and after the FFN."""

    def __init__(self, config: BertConfig, in_size: int):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(_dropout(self.dense(x), self.dropout.p, self.training, residual))


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertDenseOutput(config, config.hidden_size)

    def forward(self, x: Tensor, mask_bias: Tensor, rows: Tensor | None = None) -> Tensor:
        """As BertSelfAttention: [B, T, H] -> [B, T, H], or [B, R, H] for the given rows."""
        return self.output(self.self(x, mask_bias, rows), x if rows is None else rows)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertDenseOutput(config, config.intermediate_size)

    def forward(self, x: Tensor, mask_bias: Tensor, rows: Tensor | None = None) -> Tensor:
        """float [B, T, H] -> float [B, T, H]; given rows [B, R, H] (rows of x), only their
        outputs [B, R, H]: every step after the key/value projections is row-wise."""
        attended = self.attention(x, mask_bias, rows)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, mask_bias: Tensor, last_layer_positions: Tensor | None = None) -> list[Tensor]:
        """Returns every layer's output, L tensors of float [B, T, H].

        last_layer_positions: int [B, R], when given, the last layer runs only at these positions
            (attending over all T) and its output is [B, R, H], the rows in this order.
        """
        outputs = []
        for i, layer in enumerate(self.layer):
            rows = None
            if last_layer_positions is not None and i == len(self.layer) - 1:
                rows = x.gather(1, last_layer_positions[:, :, None].expand(-1, -1, x.shape[-1]))
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # Recompute this layer's activations in backward instead of storing them.
                x = torch.utils.checkpoint.checkpoint(layer, x, mask_bias, rows, use_reentrant=False)
            else:
                x = layer(x, mask_bias, rows)
            outputs.append(x)
        return outputs


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, sequence_output: Tensor) -> Tensor:
        """float [B, T, H] -> float [B, H]: tanh(dense(first token))."""
        return torch.tanh(self.dense(sequence_output[:, 0]))


class BertPreTrainedModel(nn.Module):
    """Shared by every model here: the original's initialisation and gradient checkpointing."""

    config: BertConfig

    def init_weights(self, *parts: nn.Module) -> None:
        """Truncated normal (std = initializer_range, cut at 2 std, like tf.truncated_normal) for
        every weight matrix and embedding; zeros for biases; LayerNorm to the identity.

        Args:
            parts: submodules to initialise (a head initialises only its own layers: the encoder
                it wraps already initialised itself); none: the whole model.
        """
        std = self.config.initializer_range
        for part in parts or (self,):
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, BertLMPredictionHead):
                    nn.init.zeros_(module.bias)

    def _head_modules(self) -> list[nn.Module]:
        """A head's own layers: everything but the wrapped BertModel."""
        return [m for name, m in self.named_children() if name != "bert"]

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Trades compute for memory: each encoder layer is recomputed during backward."""
        for module in self.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = enabled


class BertModel(BertPreTrainedModel):
    """The BERT encoder: embeddings, L Transformer layers, pooler."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.init_weights()

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, output_all_encoded_layers: bool = False,
                output_positions: Tensor | None = None) -> BertOutput:
        """Encodes a batch.

        Args:
            input_ids: int [B, T] WordPiece ids.
            token_type_ids: int [B, T] segment ids (0 for sentence A, 1 for B); zeros if None.
            attention_mask: int [B, T], 1 for real tokens, 0 for padding (the original's input_mask);
                all ones if None.
            output_all_encoded_layers: also return every layer's output.
            output_positions: int [B, P], when given, the only positions whose last-layer output is
                wanted (pretraining needs just the masked ones): the last layer computes its queries,
                attention output and feed-forward only there and at position 0 (for the pooler),
                with keys and values from all T as usual, so those rows are exactly what the full
                computation gives. sequence_output is then [B, P, H].

        Returns:
            BertOutput with sequence_output [B, T, H] (or [B, P, H]) and pooled_output [B, H].

        Raises:
            ValueError: the input is longer than max_position_embeddings, or output_positions is
                combined with output_all_encoded_layers.
        """
        if output_positions is not None and output_all_encoded_layers:
            raise ValueError("output_positions leaves the last layer partial; it cannot be combined "
                             "with output_all_encoded_layers")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}; truncate inputs to fit")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        mask_bias = None
        if attention_mask is not None:
            # Like the original: add -10000 to the scores of padding keys. A finite bias (not -inf)
            # keeps an all-padding row finite, as in TF, and it fits bf16/fp16. [B, 1, 1, T]
            mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        if output_positions is None:
            layers = self.encoder(x, mask_bias)
            return BertOutput(sequence_output=layers[-1], pooled_output=self.pooler(layers[-1]),
                              all_encoder_layers=layers if output_all_encoded_layers else None)
        # Row 0 of the last layer is position 0 ([CLS]), for the pooler; then the wanted positions.
        first = torch.zeros_like(output_positions[:, :1])
        last = self.encoder(x, mask_bias, torch.cat([first, output_positions], 1).long())[-1]
        return BertOutput(sequence_output=last[:, 1:], pooled_output=self.pooler(last))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """MLM head: transform, then logits through the word-embedding matrix (tied) plus a bias."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the masked-LM and next-sentence heads of run_pretraining.py."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.init_weights(*self._head_modules())

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, masked_lm_positions: Tensor | None = None,
                masked_lm_ids: Tensor | None = None, masked_lm_weights: Tensor | None = None,
                next_sentence_labels: Tensor | None = None) -> PreTrainingOutput:
        """Runs BERT and both pretraining heads.

        Args:
            input_ids, token_type_ids, attention_mask: as in BertModel, [B, T].
            masked_lm_positions: int [B, P] positions to predict. Vocabulary logits are computed
                only there (as the original does): the V-wide matmul is the costliest part of a
                small BERT, and P is ~15% of T.
            masked_lm_ids: int [B, P] the original tokens at those positions.
            masked_lm_weights: float [B, P], 1 for real predictions, 0 for padding slots.
            next_sentence_labels: int [B] or [B, 1], 0 = "B follows A", 1 = random B.

        Returns:
            PreTrainingOutput: masked_lm_log_probs [B * P, V], next_sentence_log_probs [B, 2], and
            the losses (their sum in `loss`) when the labels are given. In training with
            masked_lm_positions, the last encoder layer runs only at [CLS] and those positions
            (BertModel's output_positions: same losses and gradients, ~1/L less encoder work), so
            `bert.sequence_output` is then [B, P, H]; in eval mode it is the full [B, T, H].
        """
        rows_only = self.training and masked_lm_positions is not None
        bert = self.bert(input_ids, token_type_ids, attention_mask,
                         output_positions=masked_lm_positions if rows_only else None)
        if masked_lm_positions is None:
            masked_lm_positions = torch.zeros(input_ids.shape[0], 0, dtype=torch.long, device=input_ids.device)
        b, p = masked_lm_positions.shape
        h = bert.sequence_output.shape[-1]
        gathered = (bert.sequence_output if rows_only else bert.sequence_output.gather(
            1, masked_lm_positions.long()[:, :, None].expand(b, p, h))).reshape(b * p, h)
        head = self.cls.predictions
        logits = F.linear(head.transform(gathered), self.bert.embeddings.word_embeddings.weight, head.bias)
        mlm_log_probs = F.log_softmax(logits.float(), dim=-1)
        nsp_log_probs = F.log_softmax(self.cls.seq_relationship(bert.pooled_output).float(), dim=-1)
        out = PreTrainingOutput(mlm_log_probs, nsp_log_probs, bert=bert)
        if masked_lm_ids is not None:
            weights = (torch.ones(b, p, device=logits.device) if masked_lm_weights is None
                       else masked_lm_weights.float()).reshape(-1)
            per_example = -mlm_log_probs.gather(1, masked_lm_ids.reshape(-1, 1).long()).squeeze(1)
            # The original's weighted mean, with its +1e-5 so an all-padding batch gives 0, not NaN.
            out.masked_lm_loss = (weights * per_example).sum() / (weights.sum() + 1e-5)
            out.loss = out.masked_lm_loss
        if next_sentence_labels is not None:
            out.next_sentence_loss = F.nll_loss(nsp_log_probs, next_sentence_labels.reshape(-1).long())
            out.loss = out.next_sentence_loss if out.loss is None else out.loss + out.next_sentence_loss
        return out


class BertForSequenceClassification(BertPreTrainedModel):
    """run_classifier.py's head: dropout on the pooled output, then one dense layer.

    num_labels == 1 makes it a regressor (STS-B) trained with mean squared error.
    """

    def __init__(self, config: BertConfig, num_labels: int = 2):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.init_weights(*self._head_modules())

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, labels: Tensor | None = None) -> TaskOutput:
        """Returns logits float [B, num_labels] (or [B] for regression) and, given labels
        (int [B], or float [B] for regression), the loss."""
        bert = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.classifier(self.dropout(bert.pooled_output))
        if self.num_labels == 1:
            logits = logits.squeeze(-1)
        loss = None
        if labels is not None:
            loss = (F.mse_loss(logits.float(), labels.float()) if self.num_labels == 1
                    else F.cross_entropy(logits.float(), labels.long()))
        return TaskOutput(logits, loss, bert)


class BertForQuestionAnswering(BertPreTrainedModel):
    """run_squad.py's head: one dense layer giving start and end logits per token."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.init_weights(*self._head_modules())

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, start_positions: Tensor | None = None,
                end_positions: Tensor | None = None) -> TaskOutput:
        """Returns logits float [B, T, 2] (start, end) and, given int [B] positions, the mean
        of the start and end cross-entropies (as the original)."""
        bert = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.qa_outputs(bert.sequence_output)
        loss = None
        if start_positions is not None and end_positions is not None:
            start, end = logits.float().unbind(-1)
            loss = (F.cross_entropy(start, start_positions.long())
                    + F.cross_entropy(end, end_positions.long())) / 2
        return TaskOutput(logits, loss, bert)


class BertForTokenClassification(BertPreTrainedModel):
    """Per-token tagging (NER): dropout, then one dense layer on every token."""

    def __init__(self, config: BertConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.init_weights(*self._head_modules())

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, labels: Tensor | None = None) -> TaskOutput:
        """Returns logits float [B, T, num_labels] and, given int [B, T] labels, the cross-entropy
        over real tokens (attention_mask 1) whose label is not -100."""
        bert = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.classifier(self.dropout(bert.sequence_output))
        loss = None
        if labels is not None:
            labels = labels.long()
            if attention_mask is not None:
                labels = labels.masked_fill(attention_mask == 0, -100)
            loss = F.cross_entropy(logits.float().reshape(-1, self.num_labels), labels.reshape(-1),
                                   ignore_index=-100)
        return TaskOutput(logits, loss, bert)


def count_parameters(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of parameters; with exclude_embeddings, those of the embedding tables left out
    (the N of the 6N FLOPs-per-token estimate)."""
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        total -= sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return total

