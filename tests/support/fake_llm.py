"""An OpenAI-compatible HTTP server for tests: realistic, varied and sometimes faulty answers.

It recognises the pipeline's prompts by their header lines and answers as a base model would:
numbered instruction lists with near-duplicates, blacklisted words and numbering glitches mixed
in; Yes/No verdicts; instances with the faults the paper's filters exist for. HTTP faults (5xx,
429, garbage, empty choices) come at configurable rates or on demand with `fail_next`.

    python -m tests.support.fake_llm --port 8010 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.apiserver import free_port
from app.selfinstruct.prompts import (
    CLASSIFICATION_INSTRUCTION_HEADER,
    CLASSIFY_HEADER,
    INPUT_FIRST_HEADER,
    INSTRUCTION_HEADER,
    OUTPUT_FIRST_HEADER,
)


@dataclass
class FakeLLMConfig:
    seed: int = 0
    latency_s: float = 0.0
    error_rate_5xx: float = 0.0
    rate_limit_rate: float = 0.0
    garbage_rate: float = 0.0
    empty_choices_rate: float = 0.0
    truncate_rate: float = 0.05
    model: str = "fake-model"
    require_api_key: str | None = None


# --- vocabulary ------------------------------------------------------------------------------------

TOPICS = (
    "climate change", "the French Revolution", "black holes", "remote work", "urban gardening",
    "electric cars", "the human immune system", "medieval castles", "machine learning",
    "coral reefs", "the stock market", "ancient Egypt", "social media", "public libraries",
    "honey bees", "the Olympic Games", "volcanoes", "renewable energy", "jazz music",
    "the printing press", "sleep hygiene", "credit scores", "space tourism", "minimalism",
    "the water cycle", "video game design", "street food", "the Roman Empire", "vaccines",
    "plate tectonics", "online privacy", "marathon training", "chess openings", "tea ceremonies",
)  # fmt: skip
AUDIENCES = (
    "a five-year-old", "a high school student", "a new employee", "a retired engineer",
    "a tourist", "a busy parent", "a software developer", "a farmer", "a nurse", "a poet",
)  # fmt: skip
ACTIVITIES = (
    "learning a new language", "saving money on groceries", "running a first marathon",
    "writing a cover letter", "staying focused while studying", "hosting a dinner party",
    "starting a podcast", "keeping houseplants alive", "negotiating a salary",
    "travelling with a toddler", "preparing for a job interview", "reducing food waste",
    "learning to play guitar", "moving to a new city", "making friends as an adult",
)  # fmt: skip
THINGS = (
    "a coffee shop", "a bicycle repair startup", "a cat", "a fantasy kingdom", "a podcast",
    "a vegan bakery", "a hiking club", "a smart fridge", "a children's book", "a robot",
    "a boutique hotel", "a mobile banking app", "a rock band", "a community garden",
)  # fmt: skip
LANGUAGES = ("Spanish", "German", "Japanese", "Italian", "Portuguese", "Korean", "Dutch", "Swahili")
TEXT_KINDS = (
    "product review", "news headline", "tweet", "customer email", "restaurant review",
    "movie plot summary", "job posting", "text message", "poem", "scientific abstract",
)  # fmt: skip
NUMBERS = ("two", "three", "four", "five", "six", "seven", "ten")
STYLES = ("formal", "humorous", "persuasive", "friendly", "concise", "dramatic", "poetic")

# Each template names its slots in braces; several slots keep instructions far apart in ROUGE-L.
TEMPLATES = (
    "Explain {topic} to {audience} in {number} sentences.",
    "Give {number} practical tips for {activity}.",
    "Write a {style} short story about {thing} and {topic}.",
    "Suggest {number} creative names for {thing}.",
    "Translate the following {text_kind} into {language}.",
    "Classify the sentiment of the {text_kind} as positive, negative, or neutral.",
    "Summarize the {text_kind} about {topic} for {audience}.",
    "List the pros and cons of {activity} in a table with {number} rows.",
    "Compose a {style} email inviting {audience} to a talk on {topic}.",
    "Is the following {text_kind} written by a human or a machine? Answer human or machine.",
    "Create a quiz with {number} questions about {topic}.",
    "Describe a typical day of {audience} who is {activity}.",
    "Rewrite the {text_kind} in a {style} tone.",
    "Tell me whether the claim about {topic} is true or false.",
    "Plan a {number}-day schedule for {activity}.",
    "Write a {style} slogan for {thing}.",
    "Detect whether the {text_kind} contains sarcasm: yes or no.",
    "Compare {topic} and {topic2} for {audience}.",
    "Generate a dialogue between {audience} and {audience2} about {topic}.",
    "Categorize the {text_kind} into sports, politics, science, or entertainment.",
    "Come up with {number} interview questions for {audience} about {activity}.",
    "Write a {style} product description for {thing}.",
    "What are {number} common misconceptions about {topic}?",
    "Identify the main argument of the {text_kind} and rate its strength from 1 to 5.",
    "Draft a {style} apology message from {thing} to its customers.",
    "Recommend {number} books for {audience} interested in {topic}.",
)  # fmt: skip
BLACKLISTED = (
    "Describe the image of {thing} in detail.",
    "Draw a diagram that explains {topic}.",
    "Plot the growth of {topic} over ten years.",
    "Create a map of the places linked to {topic}.",
    "Open the file and count how often {topic} appears.",
    "Go to the website of {thing} and summarize it.",
    "Make a graph showing how {audience} spend their week.",
)  # fmt: skip
SHORT = ("Sort numbers.", "Tell joke.", "Be creative.", "Summarize.", "Add numbers.")
PROGRAMS = (
    "Write a program that prints the first {number} prime numbers.",
    "Write a program to translate text into {language}.",
)
ODD_STARTS = ("- Explain {topic} to {audience}.", "¿Cómo se dice {thing} en {language}?", "Écris un poème sur {topic}.")  # fmt: skip

CLASSIFICATION_HINTS = (
    "classify", "sentiment", "categorize", "true or false", "yes or no", "detect", "is the",
    "is it", "tell me whether", "tell me if", "human or a machine", "decide whether", "which of",
)  # fmt: skip
LABEL_SETS = (
    ("Positive", "Negative", "Neutral"),
    ("Yes", "No"),
    ("True", "False"),
    ("Sports", "Politics", "Science", "Entertainment"),
    ("Human", "Machine"),
)
SENTENCES = (
    "The delivery arrived two days late and the box was crushed.",
    "I could not stop smiling during the whole concert.",
    "The committee will meet again next Tuesday at noon.",
    "Our team finally shipped the new release after months of work.",
    "Honestly, the sequel is even better than the original.",
    "The recipe needs more salt, but the texture is perfect.",
    "Scientists found a new species of frog in the rainforest.",
    "The battery lasts all day, which surprised me.",
    "Traffic was terrible, so I missed the first half of the game.",
    "The museum opens a new exhibit on ancient maps next month.",
)  # fmt: skip


def _fill(template: str, rng: random.Random) -> str:
    topic, topic2 = rng.sample(TOPICS, 2)
    audience, audience2 = rng.sample(AUDIENCES, 2)
    return template.format(
        topic=topic,
        topic2=topic2,
        audience=audience,
        audience2=audience2,
        activity=rng.choice(ACTIVITIES),
        thing=rng.choice(THINGS),
        language=rng.choice(LANGUAGES),
        text_kind=rng.choice(TEXT_KINDS),
        number=rng.choice(NUMBERS),
        style=rng.choice(STYLES),
    )


def _near_duplicate(text: str, rng: random.Random) -> str:
    words = text.split()
    if len(words) > 4:
        words.insert(rng.randrange(1, len(words)), rng.choice(("really", "briefly", "also")))
    return " ".join(words)


def _prompt_instructions(prompt: str) -> list[str]:
    items = []
    for line in prompt.splitlines()[1:]:
        number, _, rest = line.partition(". ")
        if number.isdigit() and rest:
            items.append(rest)
    return items


def instruction_items(prompt: str, rng: random.Random) -> list[str]:
    """What a base model appends to the numbered list: mostly new tasks, some faulty ones."""
    shown = _prompt_instructions(prompt)
    items = []
    for _ in range(rng.randint(3, 7)):
        roll = rng.random()
        if roll < 0.08 and shown:
            items.append(_near_duplicate(rng.choice(shown), rng))
        elif roll < 0.14:
            items.append(_fill(rng.choice(BLACKLISTED), rng))
        elif roll < 0.17:
            items.append(rng.choice(SHORT))
        elif roll < 0.19:
            items.append(_fill(rng.choice(PROGRAMS), rng))
        elif roll < 0.21:
            items.append(_fill(rng.choice(ODD_STARTS), rng))
        else:
            items.append(_fill(rng.choice(TEMPLATES), rng))
    return items


def instruction_answer(prompt: str, rng: random.Random) -> str:
    """The continuation after the prompt's last "N.", numbering glitches included."""
    first = len(_prompt_instructions(prompt)) + 1
    items = instruction_items(prompt, rng)
    parts = [f" {items[0]}"]
    number = first
    for item in items[1:]:
        number += 2 if rng.random() < 0.05 else 1  # a gap in the numbering
        separator = f"{number} ." if rng.random() < 0.05 else f"{number}."
        parts.append(f"\n{separator} {item}")
    if rng.random() < 0.1:
        parts.append(f"\n{number + 1}.")  # a trailing empty item
    return "".join(parts)


def _task_of(prompt: str) -> str:
    for line in reversed(prompt.splitlines()):
        if line.startswith("Task: "):
            return line[len("Task: ") :]
    return ""


def classify_answer(task: str) -> str:
    lowered = task.lower()
    return " Yes" if any(hint in lowered for hint in CLASSIFICATION_HINTS) else " No"


def input_first_answer(task: str, rng: random.Random) -> str:
    """One to five examples related to the task; now and then the faults filters catch."""
    words = [w.strip(".,?!") for w in task.split() if len(w) > 3]
    if rng.random() < 0.25:
        return (
            f"Output: {' '.join(rng.sample(words, min(3, len(words))))} explained in a few words."
        )
    examples = []
    for n in range(1, rng.randint(1, 5) + 1):
        source = rng.choice(SENTENCES)
        output = (
            f"A response about {rng.choice(words) if words else 'this'}: {rng.choice(SENTENCES)}"
        )
        fault = rng.random()
        if fault < 0.04:
            output = ""
        elif fault < 0.07:
            output = source
        elif fault < 0.09:
            output = "The answer is:"
        elif fault < 0.11 and examples:
            examples.append(examples[-1].replace(f"Example {n - 1}", f"Example {n}"))
            continue
        examples.append(f"Example {n}\nInput: {source}\nOutput: {output}")
    if len(examples) > 1 and rng.random() < 0.04:  # same input, different output
        first_input = examples[0].split("\n")[1]
        examples[-1] = f"Example {len(examples)}\n{first_input}\nOutput: Something else entirely."
    return "\n".join(examples) + "\n\n"


def output_first_answer(rng: random.Random) -> str:
    labels = rng.choice(LABEL_SETS)
    lines = []
    for label in labels:
        lines += [f"Class label: {label}", f"Sentence: {rng.choice(SENTENCES)}"]
    return "\n".join(lines) + "\n\n"


def _apply_limits(text: str, stop: list[str], max_tokens: int) -> tuple[str, str]:
    """Cut at the first stop string, then at max_tokens whitespace tokens, like a server does."""
    cut = min((i for s in stop if (i := text.find(s)) >= 0), default=-1)
    if cut >= 0:
        text = text[:cut]
    pieces = text.split(" ")
    if len(pieces) > max_tokens:
        return " ".join(pieces[:max_tokens]), "length"
    return text, "stop"


def _kind(prompt: str) -> str:
    if prompt.startswith(CLASSIFY_HEADER):
        return "classify"
    if prompt.startswith(OUTPUT_FIRST_HEADER):
        return "instances_output_first"
    if prompt.startswith(INPUT_FIRST_HEADER):
        return "instances_input_first"
    if prompt.startswith((INSTRUCTION_HEADER, CLASSIFICATION_INSTRUCTION_HEADER)):
        return "instructions"
    return "unknown"


class FakeLLMServer:
    """Runs uvicorn in a background thread on 127.0.0.1; use as a context manager."""

    def __init__(self, config: FakeLLMConfig | None = None, *, port: int | None = None) -> None:
        self.config = config or FakeLLMConfig()
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict[str, Any]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._counter = 0
        self._scripted: list[int] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- control -----------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503) -> None:
        """The next `count` completion requests get this HTTP status."""
        with self._lock:
            self._scripted.extend([status] * count)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.counts.clear()
            self._scripted.clear()

    def start(self) -> FakeLLMServer:
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake LLM server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- behaviour ---------------------------------------------------------------------------

    def _rng_for(self, prompt: str) -> random.Random:
        with self._lock:
            self._counter += 1
            counter = self._counter
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:16]
        return random.Random(f"{self.config.seed}:{digest}:{counter}")

    def _http_fault(self, rng: random.Random) -> JSONResponse | None:
        with self._lock:
            scripted = self._scripted.pop(0) if self._scripted else None
        if scripted is None:
            roll = rng.random()
            if roll < self.config.error_rate_5xx:
                scripted = rng.choice((500, 502, 503))
            elif roll < self.config.error_rate_5xx + self.config.rate_limit_rate:
                scripted = 429
        if scripted is None:
            return None
        headers = {"retry-after": "0"} if scripted == 429 else None
        message = "rate limited" if scripted == 429 else "upstream unavailable"
        return JSONResponse(
            {"error": {"message": message, "type": "server_error"}},
            status_code=scripted,
            headers=headers,
        )

    def answer(self, prompt: str, rng: random.Random) -> str:
        kind = _kind(prompt)
        with self._lock:
            self.counts[kind] += 1
        if rng.random() < self.config.garbage_rate:
            return "".join(rng.choice("#@!?.;:-*") for _ in range(rng.randint(5, 40)))
        if kind == "instructions":
            return instruction_answer(prompt, rng)
        if kind == "classify":
            return classify_answer(_task_of(prompt))
        if kind == "instances_input_first":
            return input_first_answer(_task_of(prompt), rng)
        if kind == "instances_output_first":
            return output_first_answer(rng)
        return " I am not sure what you mean."

    def _complete(
        self, body: dict[str, Any], prompt: str
    ) -> tuple[str, str, int, int] | JSONResponse:
        rng = self._rng_for(prompt)
        if self.config.latency_s:
            time.sleep(self.config.latency_s * (0.5 + rng.random()))
        fault = self._http_fault(rng)
        if fault is not None:
            return fault
        text = self.answer(prompt, rng)
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        text, finish = _apply_limits(text, stop, int(body.get("max_tokens") or 256))
        if finish == "stop" and rng.random() < self.config.truncate_rate:
            finish = "length"
        return text, finish, len(prompt.split()), len(text.split())

    def _authorised(self, request: Request) -> bool:
        expected = self.config.require_api_key
        return expected is None or request.headers.get("authorization") == f"Bearer {expected}"

    def app(self) -> FastAPI:
        app = FastAPI()

        def unauthorised() -> JSONResponse:
            return JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                    }
                },
                status_code=401,
            )

        @app.get("/v1/models")
        def models(request: Request) -> Any:
            if not self._authorised(request):
                return unauthorised()
            return {
                "object": "list",
                "data": [{"id": self.config.model, "object": "model", "owned_by": "tests"}],
            }

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            if not self._authorised(request):
                return unauthorised()
            body = await request.json()
            return self._respond(body, str(body.get("prompt", "")), chat=False)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            if not self._authorised(request):
                return unauthorised()
            body = await request.json()
            messages = body.get("messages") or [{}]
            return self._respond(body, str(messages[-1].get("content", "")), chat=True)

        return app

    def _respond(self, body: dict[str, Any], prompt: str, *, chat: bool) -> Any:
        with self._lock:
            self.requests.append(body)
        result = self._complete(body, prompt)
        if isinstance(result, JSONResponse):
            return result
        text, finish, prompt_tokens, completion_tokens = result
        rng = random.Random(prompt_tokens + completion_tokens)
        if rng.random() < self.config.empty_choices_rate:
            choices: list[dict[str, Any]] = []
        elif chat:
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
            ]
        else:
            choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or self.config.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def run_fake_llm_main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible server for tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    args = parser.parse_args()
    config = FakeLLMConfig(seed=args.seed, latency_s=args.latency, error_rate_5xx=args.error_rate)
    server = FakeLLMServer(config, port=args.port)
    uvicorn.run(server.app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    run_fake_llm_main()
