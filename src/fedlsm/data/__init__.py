"""Data: task types, loaders (built-in, files, HF datasets, local benchmark presets), partitioning."""

from fedlsm.data.loaders import ColumnMap, available_tasks, load_file_task, load_hf_task, load_task
from fedlsm.data.partition import dirichlet_partition, iid_partition, partition, public_private_split
from fedlsm.data.task import Example, Task, answer_continuation, answer_prompt, format_question

__all__ = [
    "ColumnMap",
    "Example",
    "Task",
    "answer_continuation",
    "answer_prompt",
    "available_tasks",
    "dirichlet_partition",
    "format_question",
    "iid_partition",
    "load_file_task",
    "load_hf_task",
    "load_task",
    "partition",
    "public_private_split",
]
