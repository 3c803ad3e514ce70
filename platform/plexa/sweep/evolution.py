"""Regularised evolution (Real et al., "Regularized Evolution for Image Classifier Architecture
Search", 2019) as a Ray Tune Searcher.

The population is the `population` most recently finished trials (aging: the oldest leaves,
however good it was). Until it is full, points are drawn at random; after that each new point
is a tournament winner (best of `tournament` members drawn at random) with one searched
dimension drawn again. Works on the flat domains of `plexa.sweep.space`.
"""

from __future__ import annotations

import pickle
import random
from collections import deque
from typing import Any

from ray.tune.search import Searcher


class RegularizedEvolution(Searcher):
    def __init__(
        self,
        space: dict[str, Any] | None = None,
        *,
        metric: str | None = None,
        mode: str | None = None,
        population: int = 8,
        tournament: int = 3,
        seed: int | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self._space = dict(space or {})
        self.population_size, self.tournament = population, tournament
        self._rng = random.Random(seed)
        self._population: deque[tuple[dict[str, Any], float]] = deque(maxlen=population)
        self._live: dict[str, dict[str, Any]] = {}

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        if self._space:
            return False  # given at construction; Tune's param_space must stay empty
        self._space = dict(config)
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def _draw(self, key: str) -> Any:
        domain = self._space[key]
        if hasattr(domain, "sample"):
            return domain.sample(random_state=self._rng.randrange(2**31))
        return domain  # a constant in the param space

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if len(self._population) < self.population_size:
            point = {key: self._draw(key) for key in self._space}
        else:
            contenders = self._rng.sample(list(self._population), self.tournament)
            pick = max if self._mode == "max" else min
            parent, _ = pick(contenders, key=lambda member: member[1])
            point = dict(parent)
            searched = [k for k in self._space if hasattr(self._space[k], "sample")]
            if searched:
                key = self._rng.choice(searched)
                point[key] = self._draw(key)
        self._live[trial_id] = point
        return dict(point)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        point = self._live.pop(trial_id, None)
        if point is None or error or not result or self._metric not in result:
            return  # a failed trial does not join the population
        score = float(result[self._metric])
        if score == score:  # not NaN
            self._population.append((point, score))

    @property
    def members(self) -> list[tuple[dict[str, Any], float]]:
        return list(self._population)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
