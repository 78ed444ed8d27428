"""Top-1 accuracy and normalised accuracy (accuracy ÷ the fine-tuned model's accuracy), as an `evaluate`
module that ships inside hf_tsv, so it loads offline: ``hf_tsv.evaluation.load_metric()``."""

import datasets
import evaluate

_DESCRIPTION = """
Top-1 accuracy in percent. With ``finetuned_accuracy`` (the accuracy in percent of the task's own fine-tuned
model on the same examples), also the normalised accuracy of the TSV / task-arithmetic papers:
100 * accuracy / finetuned_accuracy.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    finetuned_accuracy (float, optional): the fine-tuned model's accuracy in percent on the same examples.
Returns:
    accuracy (float): top-1 accuracy in percent.
    normalized_accuracy (float): 100 * accuracy / finetuned_accuracy (only with finetuned_accuracy).
Example:
    metric = hf_tsv.evaluation.load_metric()
    metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], finetuned_accuracy=100.0)
    # {'accuracy': 75.0, 'normalized_accuracy': 75.0}
"""

_CITATION = """
@inproceedings{gargiulo2025tsv,
  title={Task Singular Vectors: Reducing Task Interference in Model Merging},
  author={Gargiulo, Antonio Andrea and Crisostomi, Donato and Bucarelli, Maria Sofia and Scardapane, Simone
          and Silvestri, Fabrizio and Rodol{\\`a}, Emanuele},
  booktitle={CVPR},
  year={2025}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TaskAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, finetuned_accuracy=None):
        if len(predictions) == 0:
            raise ValueError("task_accuracy: no examples to score")
        correct = sum(int(p) == int(r) for p, r in zip(predictions, references))
        result = {"accuracy": 100.0 * correct / len(predictions)}
        if finetuned_accuracy is not None:
            if finetuned_accuracy <= 0:
                raise ValueError(f"task_accuracy: finetuned_accuracy must be > 0, got {finetuned_accuracy}")
            result["normalized_accuracy"] = 100.0 * result["accuracy"] / float(finetuned_accuracy)
        return result
