"""distill: a fine-tuned teacher labels the training data softly for a compact student, the use the
original release recommends for its 24 small BERTs (Well-Read Students Learn Better, 2019).

The student's loss is alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * the hard-label loss,
with both distributions softened by temperature T (Hinton et al.; T^2 keeps the gradient scale).
For regression tasks the soft target is the teacher's prediction (mean squared error).
Data, eval and outputs are the classify job's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from jobs.backends import LocalBackend
from jobs.data.glue import TaskSpec
from jobs.spec import JobSpec, SpecError
from jobs.tasks import classify
from jobs.trainer import StepFn
from models.bert import BertForSequenceClassification
from models.checkpoints import CheckpointError, load_pretrained


def make_step_fn(spec: JobSpec, teacher: BertForSequenceClassification) -> Callable[..., StepFn]:
    assert spec.distill is not None
    temperature, alpha = spec.distill.temperature, spec.distill.alpha

    def factory(student: BertForSequenceClassification, task: TaskSpec) -> StepFn:
        def step_fn(model, batch, _step):
            inputs = (batch["input_ids"], batch["segment_ids"], batch["input_mask"])
            with torch.no_grad():
                teacher_logits = teacher(*inputs).logits.float()
            out = model(*inputs, labels=batch["label_ids"])
            student_logits = out.logits.float()
            if task.is_regression:
                soft = F.mse_loss(student_logits, teacher_logits)
            else:
                soft = F.kl_div(F.log_softmax(student_logits / temperature, -1),
                                F.log_softmax(teacher_logits / temperature, -1),
                                log_target=True, reduction="batchmean") * temperature ** 2
            return alpha * soft + (1 - alpha) * out.loss, {}
        return step_fn

    return factory


def run(spec: JobSpec, should_stop: Callable[[], bool] | None = None, backend: LocalBackend | None = None) -> dict:
    """Trains the spec's model (the student) against the teacher; returns the student's eval metrics."""
    assert spec.distill is not None, "the spec validator requires a distill section"
    task = classify.get_task(spec.data.task_name or "")
    num_labels = 1 if task.is_regression else len(task.label_list)
    try:
        teacher = load_pretrained(spec.distill.teacher_checkpoint, head="classification", num_labels=num_labels)
    except CheckpointError as err:
        raise SpecError(f"distill.teacher_checkpoint: {err}") from None
    if teacher.classifier.out_features != num_labels:
        raise SpecError(f"distill.teacher_checkpoint has {teacher.classifier.out_features} outputs, "
                        f"the task {task.name} needs {num_labels}")
    backend = backend or LocalBackend()
    teacher = teacher.to(backend.device).eval()
    return classify.run(spec, should_stop, backend, make_step_fn=make_step_fn(spec, teacher))
