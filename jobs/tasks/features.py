"""features: the original extract_features.py. Each input line is one example, ` ||| ` between the
two sentences of a pair; the output has, per example, every token with the chosen layers' vectors.

Output formats:
- jsonl: exactly the original's (`linex_index`, `features[token, layers[index, values]]`, values
  rounded to 6 decimals): `features.jsonl`.
- npz: for large inputs: shards `features-00000.npz` of up to 4096 examples holding `input_ids`,
  `input_mask` [N, T] and `layer_{index}` float16 [N, T, H] arrays.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator

import fsspec
import numpy as np
import torch

from jobs.backends import LocalBackend
from jobs.spec import JobSpec, SpecError
from jobs.tasks.base import build_model, build_tokenizer, resolve_config
from models.tokenization import FullTokenizer

_PAIR = re.compile(r"^(.*) \|\|\| (.*)$")
_SHARD_EXAMPLES = 4096


def read_lines(url: str) -> Iterator[tuple[str, str | None]]:
    """(text_a, text_b) per line, as the original's read_examples (a line without ` ||| ` is single)."""
    with fsspec.open(url, "r", encoding="utf-8") as f:
        for line in f:
            match = _PAIR.match(line.strip())
            yield (match.group(1), match.group(2)) if match else (line.strip(), None)


def _batches(url: str, tokenizer: FullTokenizer, max_seq_length: int, batch_size: int):
    batch = []
    for text_a, text_b in read_lines(url):
        batch.append(tokenizer.encode(text_a, text_b, max_seq_length=max_seq_length))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(spec: JobSpec, should_stop: Callable[[], bool] | None = None, backend: LocalBackend | None = None) -> dict:
    """Writes the features of every line of data.predict_file; returns counts. Inference needs no
    data parallelism here: on several workers, the main one does it all."""
    backend = backend or LocalBackend()
    if not backend.is_main:
        return {}
    if not spec.data.predict_file:
        raise SpecError("data.predict_file: a features job needs an input text file (one example per line)")
    config = resolve_config(spec)
    layers = spec.features.layers
    bad = [i for i in layers if not -config.num_hidden_layers <= i < config.num_hidden_layers]
    if bad:
        raise SpecError(f"features.layers {bad} are outside the model's {config.num_hidden_layers} layers "
                        "(-1 is the last)")
    tokenizer = build_tokenizer(spec, config)
    model = build_model(spec, config, "model", on=backend.device).eval()
    out_dir = spec.output.output_dir.rstrip("/")
    num_examples = 0
    jsonl = fsspec.open(f"{out_dir}/features.jsonl", "w") if spec.features.output_format == "jsonl" else None
    shard: dict[str, list[np.ndarray]] = {}
    num_shards = 0

    def flush() -> None:
        nonlocal shard, num_shards
        if shard:
            with fsspec.open(f"{out_dir}/features-{num_shards:05d}.npz", "wb") as f:
                np.savez(f, **{k: np.concatenate(v) for k, v in shard.items()})
            shard, num_shards = {}, num_shards + 1

    fs, path = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(path, exist_ok=True)
    with (jsonl if jsonl is not None else contextlib.nullcontext()) as out, torch.inference_mode():
        for batch in _batches(spec.data.predict_file, tokenizer, spec.data.max_seq_length,
                              spec.training.predict_batch_size):
            ids = torch.as_tensor(np.stack([e.input_ids for e in batch])).to(backend.device)
            types = torch.as_tensor(np.stack([e.token_type_ids for e in batch])).to(backend.device)
            mask = torch.as_tensor(np.stack([e.attention_mask for e in batch])).to(backend.device)
            all_layers = model(ids, types, mask, output_all_encoded_layers=True).all_encoder_layers
            chosen = {index: all_layers[index].float().cpu().numpy() for index in layers}
            if out is not None:
                for row, encoding in enumerate(batch):
                    out.write(json.dumps(_example_json(num_examples + row, encoding.tokens, chosen, row)) + "\n")
            else:
                shard.setdefault("input_ids", []).append(ids.cpu().numpy())
                shard.setdefault("input_mask", []).append(mask.cpu().numpy())
                for index, values in chosen.items():
                    shard.setdefault(f"layer_{index}", []).append(values.astype(np.float16))
                if sum(len(a) for a in shard["input_ids"]) >= _SHARD_EXAMPLES:
                    flush()
            num_examples += len(batch)
    flush()
    return {"num_examples": num_examples, "layers": layers, "output_format": spec.features.output_format}


def _example_json(index: int, tokens: list[str], chosen: dict[int, np.ndarray], row: int) -> dict:
    """The original's JSON for one example (key order as it writes them)."""
    features = []
    for i, token in enumerate(tokens):
        features.append({"token": token, "layers": [
            {"index": layer, "values": [round(float(x), 6) for x in values[row, i]]}
            for layer, values in chosen.items()]})
    return {"linex_index": index, "features": features}

