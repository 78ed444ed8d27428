"""Made-up text tasks for the text suite's tests: templated sentences, so no test depends on Debian data.

Example:
    >>> tasks = fake_text_tasks()
    >>> sorted(tasks), len(tasks["animals"].train.texts)
    (['animals', 'weather'], 36)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANIMALS = {"cat": "a cat, a small pet that purrs", "dog": "a dog, a pet that barks", "bird": "a bird that flies"}
WEATHER = {"rain": "rainy weather", "snow": "snowy winter weather", "sun": "sunny hot weather"}
SENTENCES = {
    "cat": ["the cat purrs on the sofa", "a kitten chases a ball of wool", "my cat sleeps all day",
            "the cat meows for food", "a tabby cat climbs the fence", "the kitten licks its paws"],
    "dog": ["the dog barks at the postman", "a puppy fetches the stick", "my dog wags its tail",
            "the dog digs in the garden", "a hound sniffs the trail", "the puppy chews a bone"],
    "bird": ["the bird sings in the tree", "a sparrow builds a nest", "the parrot repeats words",
             "a robin flies over the field", "the eagle soars high", "a pigeon pecks at crumbs"],
    "rain": ["it is raining all afternoon", "bring an umbrella, showers are coming", "the streets are wet",
             "heavy rain floods the road", "a drizzle falls on the city", "the storm pours water"],
    "snow": ["snow covers the mountains", "the children build a snowman", "icy flakes fall tonight",
             "a blizzard closes the pass", "the roofs are white with snow", "we ski on fresh powder"],
    "sun": ["the sun shines all day", "a hot and cloudless afternoon", "we sunbathe at the beach",
            "clear blue skies and heat", "the summer sun burns", "a bright sunny morning"],
}


@dataclass(frozen=True)
class FakeSplit:
    texts: tuple[str, ...]
    labels: np.ndarray


@dataclass(frozen=True)
class FakeTask:
    name: str
    class_names: tuple[str, ...]
    class_descriptions: tuple[str, ...]
    train: FakeSplit
    validation: FakeSplit
    test: FakeSplit
    source: str = "made up for the tests"


def _split(classes: list[str], variants: list[str]) -> FakeSplit:
    texts, labels = [], []
    for label, name in enumerate(classes):
        for sentence in SENTENCES[name]:
            for variant in variants:
                texts.append(variant.format(sentence))
                labels.append(label)
    return FakeSplit(tuple(texts), np.asarray(labels, dtype=np.int64))


def fake_text_tasks() -> dict[str, FakeTask]:
    """Two 3-class tasks (animals, weather): 36 train, 18 validation and 18 test texts each, no text shared."""
    tasks = {}
    for name, classes in (("animals", ANIMALS), ("weather", WEATHER)):
        names = list(classes)
        tasks[name] = FakeTask(name, tuple(names), tuple(classes.values()),
                               _split(names, ["{}.", "I think {}."]),
                               _split(names, ["They say {}."]), _split(names, ["{}, really."]))
    return tasks
