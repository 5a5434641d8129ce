"""Primitives answered from a patch's main object, shared by the `shapes` and `scene-graph`
profiles: both reduce a patch to one object (perceived or annotated) and score words
against it, so `best_text_match`, `best_image_match` and `simple_query` are the same
three loops over different `main_object`, `score` and `answer` methods."""

from __future__ import annotations

from typing import Any

from viprog.primitives.profile import Call, PatchData


class MainObjectAnswers:
    """Mixin for a `Profile` that defines `main_object(patch)`, `score(text, obj)` and
    `answer(patch, question)`."""

    def main_object(self, patch: PatchData) -> Any:
        raise NotImplementedError

    def score(self, text: str, obj: Any) -> float:
        raise NotImplementedError

    def answer(self, patch: PatchData, question: str) -> str:
        raise NotImplementedError

    def best_text_match(self, calls: list[Call]) -> list[str]:
        out = []
        for call in calls:
            options = list(call.args[0])
            main = self.main_object(call.patch)
            if not options or main is None:
                out.append(options[0] if options else "")
            else:
                out.append(max(options, key=lambda option: self.score(option, main)))
        return out

    def best_image_match(self, calls: list[Call]) -> list[Any]:
        out: list[Any] = []
        for call in calls:
            content, return_index = call.args
            content = [content] if isinstance(content, str) else list(content)
            scores = []
            for patch in call.patches:
                main = self.main_object(patch)
                scores.append(float("-inf") if main is None else max(self.score(c, main) for c in content))
            best = max(range(len(scores)), key=scores.__getitem__)
            out.append(best if return_index else list(call.patches[best].box))
        return out

    def simple_query(self, calls: list[Call]) -> list[str]:
        return [self.answer(call.patch, call.args[0] or "What is this?") for call in calls]
