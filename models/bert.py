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
class Packing:
    """Unpadding: where a padded batch's real tokens sit once packed into one [N, ...] run.

    With it the embeddings, every projection, the feed-forward layers and the LayerNorms see the
    N real tokens only, not B * T; attention runs either as a varlen kernel over the packed run
    (nested jagged tensors: FlashAttention's varlen path on GPU) or, on CPU where the jagged kernel
    loops over sequences, on a padded copy of q/k/v made just for it.

    Attributes:
        keep: bool [B, T], the attention mask with position 0 always kept (an all-padding row
            keeps its [CLS], so every sequence has a token for the pooler and the varlen kernel).
        index: int [N] flat positions (b * T + t) of the kept tokens, sequence by sequence.
        offsets: int [B + 1], cumulative lengths: sequence b is index[offsets[b]:offsets[b + 1]].
        jagged: attention through the varlen kernel (else through a padded copy).
    """

    keep: Tensor
    index: Tensor
    offsets: Tensor
    jagged: bool

    @classmethod
    def from_mask(cls, attention_mask: Tensor, jagged: bool) -> Packing:
        keep = attention_mask.bool().clone()
        keep[:, 0] = True
        lengths = keep.sum(1)
        return cls(keep, keep.reshape(-1).nonzero().squeeze(1), F.pad(lengths.cumsum(0), (1, 0)), jagged)

    def pack(self, t: Tensor) -> Tensor:
        """[B, T, ...] -> [N, ...], the kept tokens."""
        return t.reshape(-1, *t.shape[2:]).index_select(0, self.index)

    def unpack(self, t: Tensor) -> Tensor:
        """[N, ...] -> [B, T, ...], zeros at padding."""
        b, length = self.keep.shape
        flat = t.new_zeros(b * length, *t.shape[1:]).index_copy(0, self.index, t)
        return flat.view(b, length, *t.shape[1:])

    def rows(self, x: Tensor, positions: Tensor) -> Tensor:
        """Packed x [N, H] at int [B, R] positions -> [B, R, H] (the positions must be kept ones)."""
        row_of = torch.zeros(self.keep.numel(), dtype=torch.long, device=x.device)
        row_of[self.index] = torch.arange(self.index.numel(), device=x.device)
        return x[row_of.view(self.keep.shape).gather(1, positions)]

    def nested(self, t: Tensor) -> Tensor:
        """[N, heads, D] -> a jagged nested tensor [B, heads, j, D] over the sequences."""
        return torch.nested.nested_tensor_from_jagged(t, self.offsets).transpose(1, 2)


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

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, packing: Packing | None = None) -> Tensor:
        """int [B, T] ids and segment ids -> float [B, T, H] (packed: [N, H], real tokens only)."""
        if packing is None:
            positions = self.position_embeddings.weight[: input_ids.shape[1]]
        else:
            positions = self.position_embeddings(packing.index % input_ids.shape[1])
            input_ids, token_type_ids = packing.pack(input_ids), packing.pack(token_type_ids)
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

    def forward(self, x: Tensor, mask_bias: Tensor, rows: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        """float [B, T, H] and additive mask [B, 1, 1, T] -> context float [B, T, H].

        rows: float [B, R, H], when given, the only rows whose context is wanted (queries come
            from them; keys and values still from all of x): the context is then [B, R, H].
        packing: x is packed, [N, H] (see Packing); the context is too, or [B, R, H] for rows.
        """
        h = x.shape[-1]
        n, d = self.num_heads, h // self.num_heads
        q, k, v = self.query(x if rows is None else rows), self.key(x), self.value(x)
        p = self.dropout_prob if self.training else 0.0
        if packing is not None and rows is None and packing.jagged:
            q, k, v = (packing.nested(t.view(-1, n, d)) for t in (q, k, v))
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
            return context.transpose(1, 2).values().reshape(-1, h)
        if packing is not None:
            k, v = packing.unpack(k), packing.unpack(v)
            q = packing.unpack(q) if rows is None else q
        b = k.shape[0]
        q, k, v = (t.view(b, t.shape[1], n, d).transpose(1, 2) for t in (q, k, v))  # [B, N, T, D]
        context = self._attend(q, k, v, mask_bias, p).transpose(1, 2).reshape(b, q.shape[2], h)
        return packing.pack(context) if packing is not None and rows is None else context

    @staticmethod
    def _attend(q: Tensor, k: Tensor, v: Tensor, mask_bias: Tensor | None, p: float) -> Tensor:
        """Attention of [B, N, R, D] queries over [B, N, T, D] keys/values -> [B, N, R, D]."""
        if p > 0.0 and q.device.type == "cpu":
            # SDPA has no fused CPU kernel with dropout and falls back to this same math; written
            # out, its dropout mask comes from _dropout's cheaper draws.
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
            if mask_bias is not None:
                scores = scores.add_(mask_bias)
            return torch.matmul(_dropout(torch.softmax(scores, -1), p, True), v)
        # SDPA picks flash / memory-efficient kernels on GPU and a fused kernel on CPU.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias, dropout_p=p)


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

    def forward(self, x: Tensor, mask_bias: Tensor, rows: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        """As BertSelfAttention: [B, T, H] -> [B, T, H], or [B, R, H] for the given rows."""
        return self.output(self.self(x, mask_bias, rows, packing), x if rows is None else rows)


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

    def forward(self, x: Tensor, mask_bias: Tensor, rows: Tensor | None = None,
                packing: Packing | None = None) -> Tensor:
        """float [B, T, H] -> float [B, T, H]; given rows [B, R, H] (rows of x), only their
        outputs [B, R, H]: every step after the key/value projections is row-wise. Packed x
        [N, H] gives [N, H] (or [B, R, H] for rows)."""
        attended = self.attention(x, mask_bias, rows, packing)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, mask_bias: Tensor, last_layer_positions: Tensor | None = None,
                packing: Packing | None = None) -> list[Tensor]:
        """Returns every layer's output, L tensors of float [B, T, H] (packed x: [N, H]).

        last_layer_positions: int [B, R], when given, the last layer runs only at these positions
            (attending over all T) and its output is [B, R, H], the rows in this order.
        """
        outputs = []
        for i, layer in enumerate(self.layer):
            rows = None
            if last_layer_positions is not None and i == len(self.layer) - 1:
                rows = (packing.rows(x, last_layer_positions) if packing is not None
                        else x.gather(1, last_layer_positions[:, :, None].expand(-1, -1, x.shape[-1])))
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                if packing is not None and packing.jagged and not x.is_cuda:
                    raise ValueError("gradient checkpointing cannot save the jagged attention's CPU fallback "
                                     "(nested tensors); use set_unpadding(attention='padded') off GPU")
                # Recompute this layer's activations in backward instead of storing them.
                x = torch.utils.checkpoint.checkpoint(layer, x, mask_bias, rows, packing, use_reentrant=False)
            else:
                x = layer(x, mask_bias, rows, packing)
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

    def set_unpadding(self, enabled: bool = True, attention: str = "auto") -> None:
        """Drops padding tokens before the encoder (see Packing): the work follows real tokens,
        not B * T. Real tokens' outputs are unchanged (to float rounding); padding positions of
        sequence_output and all_encoder_layers become zeros (padded, they held values computed
        from the padding tokens themselves). Only the span loss of BertForQuestionAnswering reads
        them: as the original's, its softmax runs over padding positions too, so its value moves.

        attention: "jagged" (the varlen kernel of nested jagged tensors: FlashAttention on GPU),
            "padded" (SDPA on a padded copy of q/k/v: faster on CPU, where the jagged kernel
            loops over sequences), or "auto" (jagged on CUDA, padded elsewhere).
        """
        if attention not in ("auto", "jagged", "padded"):
            raise ValueError(f"attention must be auto, jagged or padded, got {attention!r}")
        for module in self.modules():
            if isinstance(module, BertModel):
                module.unpad_inputs, module.unpad_attention = enabled, attention


class BertModel(BertPreTrainedModel):
    """The BERT encoder: embeddings, L Transformer layers, pooler."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config)
        self.unpad_inputs, self.unpad_attention = False, "auto"  # set_unpadding
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
        packing = None
        if self.unpad_inputs and attention_mask is not None:
            jagged = self.unpad_attention == "jagged" or (self.unpad_attention == "auto" and input_ids.is_cuda)
            packing = Packing.from_mask(attention_mask, jagged)
            attention_mask = packing.keep
        x = self.embeddings(input_ids, token_type_ids, packing)
        mask_bias = None
        if attention_mask is not None:
            # Like the original: add -10000 to the scores of padding keys. A finite bias (not -inf)
            # keeps an all-padding row finite, as in TF, and it fits bf16/fp16. [B, 1, 1, T]
            mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        if output_positions is None:
            layers = self.encoder(x, mask_bias, packing=packing)
            if packing is not None:
                layers = [packing.unpack(layer) for layer in layers] if output_all_encoded_layers else \
                    [packing.unpack(layers[-1])]
            return BertOutput(sequence_output=layers[-1], pooled_output=self.pooler(layers[-1]),
                              all_encoder_layers=layers if output_all_encoded_layers else None)
        # Row 0 of the last layer is position 0 ([CLS]), for the pooler; then the wanted positions.
        first = torch.zeros_like(output_positions[:, :1])
        last = self.encoder(x, mask_bias, torch.cat([first, output_positions], 1).long(), packing)[-1]
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

