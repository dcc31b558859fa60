"""A fine-tune run indexes its own training rows for similar examples, never its validation rows."""

from pathlib import Path

import pytest

from mmdemo.datasets.csv_table import read_csv
from mmdemo.datasets.splits import make_split
from mmdemo.inference.similar import load_index
from mmdemo.training.finetune import FinetuneRequest, finetune
from mmdemo.training.settings import TrainSettings

from ..conftest import tiny_config
from ..similar_rows import write_noise_rows


@pytest.mark.slow  # a whole fine-tune run with its out-of-scope fit (about 20 s)
def test_finetune_indexes_the_training_rows_of_its_split_only(tmp_path):
    dataset = read_csv(write_noise_rows(tmp_path / "data"))
    settings = TrainSettings(epochs=1, batch_size=8, freeze=[], modality_dropout=0.0, seed=0)
    finetune(FinetuneRequest(dataset, tmp_path / "m", settings, config=tiny_config(), val_fraction=0.25))
    index = load_index(tmp_path / "m")
    split = make_split(dataset, None, 0.25, settings.seed)
    root = Path(dataset.csv_path).resolve().parent
    as_rows = lambda examples: sorted((e.image.relative_to(root).as_posix(), e.text, e.label) for e in examples)  # noqa: E731
    indexed = sorted((n.image, n.text, n.label) for n in map(index.row, range(len(index))))
    assert split.val and indexed == as_rows(split.train)
    assert not set(indexed) & set(as_rows(split.val))
    assert len(index.thumbnails) == len(index.images) == len({e.image for e in split.train})


def test_a_row_of_several_tasks_is_listed_with_each_tasks_label():
    from mmdemo.datasets.csv_table import Example
    from mmdemo.training.similar_fit import row_label

    assert row_label(Example(2, Path("a.png"), "q", "cat")) == "cat"
    several = Example(3, Path("a.png"), "q", "", labels={"animal": "", "colour": "red", "size": "big"})
    assert row_label(several) == "colour: red; size: big"  # a task without a label for the row is left out
