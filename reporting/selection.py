"""Which test examples ``certify.py``'s reports score (``certify.num_examples``, ``certify.labels``).

``labels: dataset`` takes the first examples the model classifies correctly, ``labels: predicted`` the first
examples with the model's own predictions as labels. The selection runs on the device of the model's parameters.
"""

import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from bounds.modes import evaluation_mode
from reporting.options import CertifyOptions


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def select_correct(model: nn.Module, dataset: Dataset, limit: int, batch_size: int = 500) -> tuple[list[int], float]:
    """The first ``limit`` correctly classified indices and the accuracy over the examples scanned to find them.

    Runs on the device of ``model``'s parameters.

    Args:
        model: Classifier returning logits.
        dataset: Dataset of ``(x, y)``.
        limit: How many indices to return at most.
        batch_size: Evaluation batch size.

    Returns:
        ``(indices, clean_accuracy)``; the accuracy covers the scanned prefix of ``dataset`` (whole batches).
    """
    chosen: list[int] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    device = _model_device(model)
    offset = 0
    with evaluation_mode(model), torch.no_grad():
        for x, y in loader:
            predicted = model(x.to(device)).argmax(dim=1)
            correct = (predicted == torch.as_tensor(y, device=device)).nonzero().flatten() + offset
            chosen.extend(correct.tolist())
            offset += len(x)
            if len(chosen) >= limit:
                break
    return chosen[:limit], len(chosen) / max(offset, 1)


def select_predicted(model: nn.Module, dataset: Dataset, limit: int,
                     batch_size: int = 500) -> tuple[list[int], list[int], float]:
    """The first ``limit`` examples with the model's own predictions as labels (``certify.labels: predicted``).

    Runs on the device of ``model``'s parameters.

    Args:
        model: Classifier returning logits.
        dataset: Dataset of ``(x, y)``.
        limit: How many examples to take.
        batch_size: Evaluation batch size.

    Returns:
        ``(indices, predicted_labels, dataset_accuracy)``: the accuracy of the predictions on the dataset's labels
        of those examples.
    """
    predictions: list[int] = []
    correct = 0
    device = _model_device(model)
    loader = DataLoader(Subset(dataset, range(min(limit, len(dataset)))), batch_size=batch_size, shuffle=False)
    with evaluation_mode(model), torch.no_grad():
        for x, y in loader:
            predicted = model(x.to(device)).argmax(dim=1)
            correct += int((predicted == torch.as_tensor(y, device=device)).sum())
            predictions.extend(predicted.tolist())
    return list(range(len(predictions))), predictions, correct / max(len(predictions), 1)


def select_examples(network: nn.Module, dataset: Dataset, options: CertifyOptions,
                    trainer: Trainer) -> tuple[list[int], list[int] | None, float, float]:
    """The examples of the reports, on the trainer's device, as ``certify.labels`` says.

    Args:
        network: The classifier.
        dataset: The test dataset.
        options: The ``certify`` options.
        trainer: The trainer whose device runs the selection.

    Returns:
        ``(indices, labels, clean_accuracy, dataset_accuracy)``: ``labels`` replace the dataset's (``None``:
        keep them); ``clean_accuracy`` is on the labels used (1 for predicted labels), ``dataset_accuracy`` on
        the dataset's labels.

    Raises:
        ValueError: If no example can be scored.
    """
    network.to(trainer.strategy.root_device)
    if options.labels == "predicted":
        indices, labels, accuracy = select_predicted(network, dataset, options.num_examples, options.batch_size)
        clean_accuracy = 1.0
    else:
        indices, accuracy = select_correct(network, dataset, options.num_examples, options.batch_size)
        labels, clean_accuracy = None, accuracy
    if not indices:
        raise ValueError("The model classifies no test example correctly: nothing to certify (for a model that "
                         "cannot, e.g. random weights, --certify.labels predicted scores its own predictions)")
    return indices, labels, clean_accuracy, accuracy
