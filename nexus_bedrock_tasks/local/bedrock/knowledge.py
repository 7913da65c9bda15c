"""Knowledge-base retrieval over a folder of text files: paragraphs ranked by TF-IDF cosine.

Each ``.txt``/``.md`` file is cut at blank lines into passages. A query and each passage are
bags of lower-cased words (stop words dropped); the score is the cosine of their TF-IDF
vectors (idf = ln((1 + N) / (1 + df)) + 1), rounded to 4 decimals, so it is in [0, 1] and
the same on every run. Ties keep file order.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from nexus_bedrock_tasks.local.bedrock.config import KnowledgeBaseSpec

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset(
    "a an and are as at be but by can do does for from how i in is it me my of on or "
    "should that the this to was what when where which who why will with you your".split()
)
DATA_SOURCE_ID = "EMULATORDS"


def words(text: str) -> list[str]:
    """The indexable words of `text`."""
    return [word for word in _WORD.findall(text.lower()) if word not in _STOP_WORDS]


@dataclass(frozen=True)
class Passage:
    """One retrievable paragraph."""

    text: str
    source_uri: str
    chunk_id: str


@dataclass(frozen=True)
class Retrieved:
    """A passage and its score for one query."""

    passage: Passage
    score: float

    def reference(self) -> dict[str, Any]:
        """The ``retrievedReferences[]`` item of a trace or citation."""
        return {
            "content": {"text": self.passage.text, "type": "TEXT"},
            "location": {"s3Location": {"uri": self.passage.source_uri}, "type": "S3"},
            "metadata": {
                "x-amz-bedrock-kb-source-uri": self.passage.source_uri,
                "x-amz-bedrock-kb-chunk-id": self.passage.chunk_id,
                "x-amz-bedrock-kb-data-source-id": DATA_SOURCE_ID,
                "score": self.score,
            },
        }


class KnowledgeBaseIndex:
    """The passages of one knowledge base and their TF-IDF vectors."""

    def __init__(self, spec: KnowledgeBaseSpec) -> None:
        self.spec = spec
        prefix = spec.source_uri_prefix or f"s3://emulator-kb-{spec.id.lower()}/"
        self.passages: list[Passage] = []
        for file in sorted(spec.path.rglob("*")):
            if file.suffix not in {".txt", ".md"} or not file.is_file():
                continue
            relative = file.relative_to(spec.path).as_posix()
            paragraphs = re.split(r"\n\s*\n", file.read_text(encoding="utf-8"))
            for number, paragraph in enumerate(p for p in paragraphs if p.strip()):
                self.passages.append(
                    Passage(
                        text=" ".join(paragraph.split()),
                        source_uri=prefix + relative,
                        chunk_id=f"{relative}#{number}",
                    )
                )
        counts = [Counter(words(passage.text)) for passage in self.passages]
        document_frequency: Counter[str] = Counter()
        for count in counts:
            document_frequency.update(count.keys())
        total = len(self.passages)
        self._idf = {
            word: math.log((1 + total) / (1 + df)) + 1 for word, df in document_frequency.items()
        }
        self._vectors = [self._weigh(count) for count in counts]

    def _weigh(self, count: Counter[str]) -> dict[str, float]:
        vector = {word: n * self._idf.get(word, 0.0) for word, n in count.items()}
        norm = math.sqrt(sum(value * value for value in vector.values()))
        return {word: value / norm for word, value in vector.items()} if norm else {}

    def retrieve(self, query: str) -> list[Retrieved]:
        """The best passages for `query` (score > 0), at most ``number_of_results``."""
        query_vector = self._weigh(Counter(words(query)))
        scored = [
            Retrieved(passage, round(_dot(query_vector, vector), 4))
            for passage, vector in zip(self.passages, self._vectors, strict=True)
        ]
        ranked = sorted((r for r in scored if r.score > 0), key=lambda r: -r.score)
        return ranked[: self.spec.number_of_results]


def _dot(left: dict[str, float], right: dict[str, float]) -> float:
    return sum(weight * right.get(word, 0.0) for word, weight in left.items())
